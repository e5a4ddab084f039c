"""Autotune configuration lists for the Mamba-3 scan kernels.

Without a GPU the Triton interpreter cannot benchmark (its autotuner needs a driver), so only
the first config of each list is offered there; the tests then launch every config explicitly
through ``all_configs(...)`` so that none of them is dead code.
"""

from __future__ import annotations

import os

import torch
import triton


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _cfg(num_warps: int, num_stages: int, **meta) -> triton.Config:
    return triton.Config(dict(meta), num_warps=num_warps, num_stages=num_stages)


# Forward chunked scan: one program per (batch, head, value block) walking all chunks.
# The [rows, N/2] rotated q/k tiles and the fp32 [N/2, P] state halves live in registers,
# so 8 warps avoid spills at N = 128; 4 is better for small heads.
# BLOCK_P splits the value dim over programs: more programs for small B*H, at the price of
# recomputing the [rows, rows] score tile once per value block.
SCAN_FWD_CONFIGS = [
    _cfg(4, 1, BLOCK_P=64),
    _cfg(8, 1, BLOCK_P=64),
    _cfg(4, 2, BLOCK_P=32),
    _cfg(8, 2, BLOCK_P=64),
    _cfg(4, 1, BLOCK_P=32),
]

# Backward chunked scan (reverse walk over chunks, one program per (batch, head)).
SCAN_BWD_CONFIGS = [
    _cfg(4, 1),
    _cfg(8, 1),
    _cfg(8, 2),
]

# Decode step: one program per (batch, head, value block of BLOCK_P rows of the state).
STEP_CONFIGS = [
    _cfg(4, 1, BLOCK_P=16),
    _cfg(4, 1, BLOCK_P=32),
    _cfg(8, 1, BLOCK_P=64),
    _cfg(2, 1, BLOCK_P=8),
]


def active(configs: list[triton.Config]) -> list[triton.Config]:
    """The configs the autotuner may try here: all of them on a GPU, the first one otherwise."""
    if torch.cuda.is_available() and not interpreting():
        return configs
    return configs[:1]
