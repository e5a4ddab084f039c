"""``train.init_from``: start a run from another run's weights (e.g. adapt an AR model to diffusion).

Only the weights travel; the optimizer, EMA, step counter and data order start fresh, so the new
run is an ordinary run from then on (``--resume`` restores it from its own checkpoints).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from diffmamba.config import to_dict
from diffmamba.core.errors import UserError
from diffmamba.data import load_tokenizer
from diffmamba.model_folder import find_model_dir, load_model_folder

# Model fields that change no weight and no function: a warm start may differ in them.
WARM_START_FREE = ("chunk_size", "max_seq_len", "dt_min", "dt_max", "dt_init_floor", "init_std")


@dataclass
class WarmStartSource:
    model_dir: str
    model: torch.nn.Module
    tokenizer_fingerprint: str


def read_warm_start(path: str) -> WarmStartSource:
    """The model found at ``path`` and its tokenizer's fingerprint, read before the run folder is
    touched: ``--fresh`` may delete a source that lies inside it."""
    model_dir = find_model_dir(path)
    model = load_model_folder(model_dir)
    if not os.path.isfile(os.path.join(model_dir, "tokenizer.json")):
        raise UserError(f"train.init_from: {model_dir} has no tokenizer.json, so its token ids cannot be checked "
                        "against this run's tokenizer; point at a folder written by `diffmamba train`")
    return WarmStartSource(model_dir, model, load_tokenizer(model_dir).fingerprint)


def warm_start(model: torch.nn.Module, source: WarmStartSource, tokenizer) -> None:
    """Load the source's weights into ``model``. The source must have this run's architecture and
    tokenizer (token ids index the embedding): anything else is a one-line UserError naming the
    difference."""
    mine, theirs = to_dict(model.config), to_dict(source.model.config)
    changed = [f"{k} {theirs.get(k)} vs {v}" for k, v in mine.items() if k not in WARM_START_FREE and theirs.get(k) != v]
    if changed:
        raise UserError(f"train.init_from: the model in {source.model_dir} has another architecture than model.* "
                        f"({'; '.join(changed)}); train with that run's model config (e.g. its config.yaml)")
    if source.tokenizer_fingerprint != tokenizer.fingerprint:
        raise UserError(f"train.init_from: {source.model_dir} was trained with another tokenizer than this run's "
                        "data.tokenizer (its token ids mean other tokens); use the same data.tokenizer and "
                        "data.tokenizer_vocab_size as that run")
    model.load_state_dict(source.model.state_dict())
