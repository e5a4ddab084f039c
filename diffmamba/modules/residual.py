"""A trunk block: x + mixer(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)) (pre-norm, Llama-style); the
mixer is a BiMixer or, for an "A" letter of ``model.layer_pattern``, attention (``make_block``)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention
from .bimixer import BiMixer
from .norms import RMSNorm
from diffmamba.config import ModelConfig
from diffmamba.ops import Mamba3State


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): [..., D] -> [..., D]; gate and up share one GEMM."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)
        return self.down(F.silu(gate) * up)


class ResidualBlock(nn.Module):
    """x [B, T, D] -> x + mixer(norm(x)) -> x + mlp(norm(x)).

    The residual stream is never dropped (the DiMamba bug, docs/masked-diffusion.md §1.7): both
    sub-layers add to their input. Under bf16 autocast the stream stays float32 because the
    embedding is float32 and sums promote.
    """

    def __init__(self, cfg: ModelConfig, mixer: Optional[nn.Module] = None):
        super().__init__()
        self.mixer_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        # Any mixer with BiMixer's call signature (e.g. modules/attention.py's); default BiMixer.
        self.mixer = BiMixer(cfg) if mixer is None else mixer
        self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.mlp_hidden)

    def forward(
        self,
        x: torch.Tensor,
        causal: bool = False,
        valid_mask: Optional[torch.Tensor] = None,
        fwd_initial_state: Optional[Mamba3State] = None,
        return_fwd_state: bool | str = False,
    ):
        """Returns x [B, T, D], or (x, forward-direction final state) with ``return_fwd_state``."""
        mixed = self.mixer(self.mixer_norm(x), causal=causal, fwd_initial_state=fwd_initial_state,
                           return_fwd_state=return_fwd_state, valid_mask=valid_mask)
        mixed, state = mixed if return_fwd_state else (mixed, None)
        x = x + mixed
        x = x + self.mlp(self.mlp_norm(x))
        return (x, state) if return_fwd_state else x

    def step(self, x_t: torch.Tensor, state: Optional[Mamba3State]):
        """One causal token: x_t [B, D] -> (x_t [B, D], new forward state)."""
        mixed, state = self.mixer.step(self.mixer_norm(x_t), state)
        x_t = x_t + mixed
        return x_t + self.mlp(self.mlp_norm(x_t)), state


def make_block(cfg: ModelConfig, kind: str) -> ResidualBlock:
    """The trunk block for one letter of ``layer_pattern``: "M" = Mamba-3 (the default BiMixer, built
    exactly as before layer patterns existed), "A" = the attention mixer of modules/attention.py."""
    if kind == "M":
        return ResidualBlock(cfg)
    if kind == "A":
        return ResidualBlock(cfg, mixer=Attention(cfg))
    raise ValueError(f"layer kind must be 'M' or 'A', got {kind!r}")
