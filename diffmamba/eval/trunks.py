"""Trunks side by side in ``diffmamba eval``: Mamba-3, attention and hybrid diffusion checkpoints.

    diffmamba eval compare --trunks runs/tiny-diffusion runs/tiny-attention runs/tiny-hybrid \\
        --judge none --contexts 64 512 2048 --out eval/trunks

Each ``--trunks`` checkpoint becomes a diffusion-mode system named by its trunk (``mamba3``,
``attention``, ``hybrid (MMMA)``, from its ``layer_pattern``), so the likelihood bound, gen-PPL with
entropy and the speed tables cover it like any system. With ``--contexts`` the report adds, per
trunk, sampling speed after contexts of those lengths (``diffmamba.eval.bd3lm``) and the bytes
of the decode cache per sequence: the per-layer state AR decoding and the block sampler keep after
a context of C tokens — a fixed-size ``Mamba3State`` per Mamba-3 layer, a ``KVCache`` growing
linearly with C per attention layer. Measured by prefilling C random tokens, not computed. The
report section and plot: ``diffmamba.eval.report.trunks``.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from diffmamba.config import ModelConfig, config_from_dict
from diffmamba.core.errors import UserError
from diffmamba.core.io import read_json
from diffmamba.eval.systems import System
from diffmamba.model_folder import find_model_dir
from diffmamba.modules.attention import KVCache


# ------------------------------------------------------------------------------ cache and names

def cache_bytes(states) -> int:
    """Bytes held by a per-layer decode cache (a list of Mamba3State / KVCache, or None = empty)."""
    total = 0
    for state in states or ():
        if isinstance(state, KVCache):
            total += state.nbytes
        else:
            total += sum(t.numel() * t.element_size() for t in state if isinstance(t, torch.Tensor))
    return total


def trunk_name(config) -> str:
    """'mamba3', 'attention' or 'hybrid (MMMA)' from a ModelConfig's layer pattern."""
    kinds = set(config.layer_kinds)
    if kinds == {"M"}:
        return "mamba3"
    if kinds == {"A"}:
        return "attention"
    return f"hybrid ({config.layer_pattern})"


def _checkpoint_config(path: str):
    """The ModelConfig in a checkpoint's config.json (no weights loaded)."""
    model_dir = find_model_dir(path)
    try:
        return config_from_dict(ModelConfig, read_json(os.path.join(model_dir, "config.json"))["model"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"--trunks {path}: no readable config.json with a 'model' section; pass a run folder or "
                        "its final/ written by `diffmamba train`") from None


def trunk_systems(checkpoints: Sequence[str]) -> list:
    """One diffusion-mode ``System`` per checkpoint, named by its trunk (path added on a clash)."""
    described = []
    for path in checkpoints:
        config = _checkpoint_config(path)
        described.append((path, trunk_name(config), config.layer_kinds))
    names = [name for _, name, _ in described]
    return [System(f"diffusion · {name}" + ("" if names.count(name) == 1 else f" ({path})"), "diffusion", path,
                   {"trunk": name, "layers": kinds}) for path, name, kinds in described]




def apply_trunk_options(args, opts) -> None:
    if getattr(args, "trunks", None):
        opts.systems = list(opts.systems) + trunk_systems(args.trunks)


# ---------------------------------------------------------------------------------- measuring

def evaluate_cache_bytes(systems, ckpts: dict, contexts: Sequence[int], seed: int = 0, device=None) -> list[dict]:
    """Rows {system, trunk, layers, context, cache_bytes, per_layer}: the decode cache per sequence
    (batch 1) after prefilling ``context`` random tokens, in the model's dtype."""
    rows = []
    for system in systems:
        if "trunk" not in system.settings:
            continue
        model = ckpts[system.checkpoint].model
        vocab = model.config.vocab_size
        for context in contexts:
            if context < 1:
                continue
            tokens = torch.randint(0, vocab, (1, context), generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                _, state = model.prefill(tokens.to(device or next(model.parameters()).device))
            rows.append({"system": system.name, "trunk": system.settings["trunk"],
                         "layers": system.settings["layers"], "context": int(context),
                         "cache_bytes": cache_bytes(state), "per_layer": [cache_bytes([s]) for s in state],
                         "dtype": str(next(model.parameters()).dtype).replace("torch.", "")})
    return rows
