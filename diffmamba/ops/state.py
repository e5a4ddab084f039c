"""Continuation state of one Mamba-3 scan direction (see docs/contracts.md §1).

A NamedTuple, so it passes through autograd, ``torch.compile`` and ``tree_map`` untouched.
Shapes use the glossary of ``diffmamba/ops/reference.py`` (B T H P N R S).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class Mamba3State(NamedTuple):
    """What a scan needs to continue exactly where another one stopped.

    ssm:    [B, H, P, N]                 float32 (float64 for float64 inputs): h after the last token.
    k_prev: [B, H, N] or [B, H, R, N]    input dtype: last token's key, biased and rotated by its
                                         own cumulative phase (the RoPE frame).
    v_prev: [B, H, P] or [B, H, R, P]    input dtype: last token's value.
    phase:  [B, H, S]                    float32 (float64 for float64 inputs): cumulative phase
                                         mod 2*pi.
    """

    ssm: torch.Tensor
    k_prev: torch.Tensor
    v_prev: torch.Tensor
    phase: torch.Tensor

    @staticmethod
    def zeros(
        B: int,
        H: int,
        P: int,
        N: int,
        S: int,
        R: Optional[int] = None,
        dtype: torch.dtype = torch.float32,
        device: Optional[torch.device | str] = None,
    ) -> "Mamba3State":
        """A fresh state: equivalent to starting a scan with ``initial_state=None``.

        ``dtype`` is the input (q/k/v) dtype; ``ssm`` and ``phase`` are float32 unless it is
        float64. ``R=None`` gives SISO key/value shapes, an int gives MIMO ones.
        """
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        rank = () if R is None else (R,)
        return Mamba3State(
            ssm=torch.zeros(B, H, P, N, dtype=state_dtype, device=device),
            k_prev=torch.zeros(B, H, *rank, N, dtype=dtype, device=device),
            v_prev=torch.zeros(B, H, *rank, P, dtype=dtype, device=device),
            phase=torch.zeros(B, H, S, dtype=state_dtype, device=device),
        )
