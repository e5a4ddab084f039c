"""Autotune configuration lists for the Mamba-3 scan kernels.

Without a GPU the Triton interpreter cannot benchmark (its autotuner needs a driver), so only
the first config of each list is offered there; the tests then launch every config explicitly
through ``all_configs(...)`` so that none of them is dead code.
"""

from __future__ import annotations

import os

import torch
import triton

from diffmamba.core.device import triton_interpreting

interpreting = triton_interpreting  # the kernels' name for it


def _cfg(num_warps: int, num_stages: int, **meta) -> triton.Config:
    return triton.Config(dict(meta), num_warps=num_warps, num_stages=num_stages)


# Forward chunked scan: one program per (batch, head, value block) walking all chunks.
# The [rows, N/2] rotated q/k tiles and the fp32 [N/2, P] state halves live in registers,
# so 8 warps avoid spills at N = 128; 4 is better for small heads.
# BLOCK_P splits the value dim over programs (more programs for small B*H, at the price of
# recomputing the [rows, rows] score tile once per value block). Only single-stage BLOCK_P = 64
# configs are listed: on H100 + Triton 3.6 the (4 warps, 2 stages, BLOCK_P 32) variant raised an
# illegal memory access at B*T = 16k, H = 16 and the autotuned list containing BLOCK_P = 32 / 2-stage
# entries crashed the benchmark too (root cause not established; see diffmamba/kernels/README.md).
SCAN_FWD_CONFIGS = [
    _cfg(4, 1, BLOCK_P=64),
    _cfg(8, 1, BLOCK_P=64),
]

# Decode step: one program per (batch, head, value block of BLOCK_P rows of the state).
STEP_CONFIGS = [
    _cfg(4, 1, BLOCK_P=16),
    _cfg(4, 1, BLOCK_P=32),
    _cfg(8, 1, BLOCK_P=64),
    _cfg(2, 1, BLOCK_P=8),
]


def active(configs: list[triton.Config]) -> list[triton.Config]:
    """The configs the autotuner may try here: all of them on a GPU, the first one otherwise.

    ``DIFFMAMBA_AUTOTUNE=0`` also keeps only the first one on a GPU (fast test runs: every
    config is still launched once by tests/kernels/test_step_and_configs.py).
    """
    if torch.cuda.is_available() and not interpreting() and os.environ.get("DIFFMAMBA_AUTOTUNE", "1") != "0":
        return configs
    return configs[:1]


def forward_configs() -> list[triton.Config]:
    """Forward autotune list; ``DIFFMAMBA_FWD_CONFIGS=0,2`` restricts it to those indices
    (used to bisect a misbehaving config on a new GPU/Triton)."""
    picked = os.environ.get("DIFFMAMBA_FWD_CONFIGS")
    configs = SCAN_FWD_CONFIGS
    if picked:
        configs = [SCAN_FWD_CONFIGS[int(i)] for i in picked.split(",")]
    return active(configs)
