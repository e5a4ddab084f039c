"""Checkpoints for evaluation: the model, its tokenizer and the run config it was trained with.

    ckpt = load_checkpoint("runs/mdlm")          # run folder (uses final/), final/ itself, or a step folder
    ckpt.model, ckpt.tokenizer, ckpt.run_config  # run_config is None when the folder has none
    require_same_tokenizer([ckpt_a, ckpt_b], "likelihood")

Where the run config comes from: ``run_config.yaml`` in the model folder, else in its parent (the
run folder ``diffmamba train`` writes). Evaluation rebuilds the validation split from it
(``diffmamba.eval.data``) so every model is scored on the same tokens with the packing it was
trained with.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from diffmamba.config import RunConfig, load_config
from diffmamba.core.device import resolve_device
from diffmamba.core.errors import UserError
from diffmamba.data.tokenizer import load_tokenizer
from diffmamba.model_folder import find_model_dir, load_model_folder

RUN_CONFIG_NAMES = ("run_config.yaml", "config.yaml")
_CACHE: dict[tuple, "Checkpoint"] = {}


@dataclass
class Checkpoint:
    path: str  # as given by the user
    model_dir: str  # the folder holding model.safetensors
    model: torch.nn.Module
    tokenizer: object  # diffmamba.data.tokenizer.Tokenizer
    run_config: Optional[object]  # diffmamba.config.RunConfig or None
    run_config_path: Optional[str]

    @property
    def max_seq_len(self) -> int:
        return int(self.model.config.max_seq_len)

    @property
    def trained_objective(self) -> Optional[str]:
        return self.run_config.objective.name if self.run_config is not None else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def describe(self) -> dict:
        export = {}
        export_path = os.path.join(self.model_dir, "export.json")
        if os.path.isfile(export_path):
            try:
                with open(export_path) as f:
                    export = json.load(f)
            except (OSError, ValueError):
                export = {}
        return {"path": os.path.abspath(self.path), "model_dir": os.path.abspath(self.model_dir),
                "trained_steps": export.get("step"), "weights": export.get("weights"),
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "trained_objective": self.trained_objective, "run_config": self.run_config_path,
                "init_from": self.run_config.train.init_from if self.run_config is not None else None,
                "tokenizer": {"vocab_size": self.tokenizer.vocab_size, "eos_id": self.tokenizer.eos_id,
                              "mask_id": self.tokenizer.mask_id, "fingerprint": self.tokenizer.fingerprint}}


def find_run_config(model_dir: str) -> Optional[str]:
    for folder in (model_dir, os.path.dirname(os.path.abspath(model_dir)),
                   os.path.dirname(os.path.dirname(os.path.abspath(model_dir)))):
        for name in RUN_CONFIG_NAMES:
            p = os.path.join(folder, name)
            if os.path.isfile(p):
                return p
    return None


def load_checkpoint(path: str, device: Optional[str] = None) -> Checkpoint:
    """Load model (float32 weights) + tokenizer + run config, cached per process by folder and device."""

    dev = resolve_device(device)
    model_dir = find_model_dir(path)
    key = (os.path.abspath(model_dir), str(dev))
    if key in _CACHE:
        return _CACHE[key]
    if not os.path.isfile(os.path.join(model_dir, "tokenizer.json")):
        raise UserError(f"{model_dir} has no tokenizer.json; evaluation needs the checkpoint's tokenizer "
                        "(every checkpoint `diffmamba train` writes has one: copy it in with tokenizer.save(dir))")
    model = load_model_folder(model_dir).to(device=dev, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise UserError(f"{model_dir}: tokenizer.json has {tokenizer.vocab_size} tokens but the model was built for "
                        f"{model.config.vocab_size}; the files come from different runs, save the checkpoint again")
    cfg_path = find_run_config(model_dir)
    run_config = load_config(RunConfig, cfg_path) if cfg_path else None
    ckpt = Checkpoint(path, model_dir, model, tokenizer, run_config, cfg_path)
    _CACHE[key] = ckpt
    return ckpt


def require_same_tokenizer(ckpts: Sequence[Checkpoint], what: str) -> None:
    """Comparisons of token-level numbers need one tokenizer; say which differ and how to fix it."""
    first = ckpts[0]
    for other in ckpts[1:]:
        if other.tokenizer.fingerprint != first.tokenizer.fingerprint:
            raise UserError(f"{what}: checkpoints {first.path} and {other.path} use different tokenizers "
                            f"(vocab {first.tokenizer.vocab_size} vs {other.tokenizer.vocab_size}, fingerprints "
                            f"{first.tokenizer.fingerprint} vs {other.tokenizer.fingerprint}); per-token numbers are "
                            "not comparable: train both with the same data.tokenizer, or compare text-level "
                            "metrics only (eval generate)")
