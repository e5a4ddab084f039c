"""Trunk comparison helpers: what a decode cache costs, and which trunk a checkpoint has.

The per-layer decode cache (``model.prefill`` / ``model.step`` / the block sampler) is a
``Mamba3State`` for a Mamba-3 layer — fixed size, whatever the context — and a ``KVCache`` for an
attention layer — keys and values of every token seen, linear in the context.
"""
from __future__ import annotations

import torch

from diffmamba.modules.attention import KVCache


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
