"""RMSNorm, computed in float32 (float64 for float64 inputs) and returned in the input dtype.

Why not ``torch.nn.RMSNorm``: it gives the same numbers on CPU, but with bf16 activations and float32
weights (autocast inference, bf16 mixed-precision training: the common case here) it cannot use its
fused kernel and warns ("Mismatch dtype between input and weight"), and on CUDA its fused float32
reduction order differs from the reference-exact path the kernel tests compare against. This one
always upcasts, computes, and casts back, silently; the checkpoint key (``weight``) is the same.
"""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last axis of size ``dim``; weight init 1.

    x: [..., dim] -> [..., dim] in x's dtype. The statistics are taken in at least float32 so a
    bf16 activation does not lose the small-norm rows.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute = x.to(torch.promote_types(x.dtype, torch.float32))
        normed = compute * torch.rsqrt(compute.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (normed * self.weight.to(compute.dtype)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
