"""Bidirectional Mamba-3 mixer with three ways to tie the two directions (docs/mamba3.md §5.3)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from diffmamba.config import ModelConfig
from diffmamba.modules.mamba3 import Mamba3Direction, Mamba3Mixer, ssm_proj_width, zero_pads
from diffmamba.ops import Mamba3State, mamba3_scan_pair

TIE_MODES = ("full", "partial", "none")


class BiMixer(nn.Module):
    """Forward + reverse Mamba-3 over u [B, T, D] -> [B, T, D]; ``causal=True`` = forward only.

    Tie modes (what the two directions share):

    - ``full``: one in_proj ``[z, x, B, C, dd_dt, dd_A, trap, angle]`` and one out_proj; only the
      per-direction parameters of ``Mamba3Direction`` differ (dt_bias, B/C norm weights and
      biases, D, MIMO vectors). Both directions then share selectivity, decay and rotation rates.
    - ``partial`` (default): shared z/x rows of in_proj and out_proj; each direction has its own
      B, C, dd_dt, dd_A, trap, angle rows (in_proj ``[z, x, ssm_fwd, ssm_rev]``) plus its own
      ``Mamba3Direction`` parameters. Costs D*(2RN + 3H + S) extra weights per layer.
    - ``none``: two independent ``Mamba3Mixer`` layers.

    Combine: both directions read the same z and x; each gates its own scan output (SISO
    ``y * silu(z)``; MIMO with its own rank vectors), the gated outputs are added, and one
    out_proj maps the sum back to D:

        out = out_proj(gate_f(y_fwd) + gate_r(y_rev))   # SISO: out_proj((y_fwd + y_rev) * silu(z))

    By linearity this is Caduceus' add-merge of two tied out_proj outputs, with one GEMM instead of
    two. ``none``: out = mixer_fwd(u) + mixer_rev(u). The self term (diagonal and D skip) is
    counted once per direction. in_proj runs once; both directions go to ``mamba3_scan_pair`` in
    one call (no flips here: the op handles the reverse direction). Causal mode computes only the
    forward rows of in_proj and returns out_proj(gate_f(y_fwd)) — the AR path, identical parameters.

    Block diffusion hook: the forward direction may start from ``fwd_initial_state`` and return
    its final state; the reverse direction always starts from zero (it depends on the future).
    """

    def __init__(self, cfg: ModelConfig, tie: Optional[str] = None):
        super().__init__()
        self.tie = cfg.tie if tie is None else tie
        if self.tie not in TIE_MODES:
            raise ValueError(f"tie must be one of {TIE_MODES}, got {self.tie!r}")
        self.d_inner, self.ssm_width = cfg.d_inner, ssm_proj_width(cfg)
        if self.tie == "none":
            self.fwd = Mamba3Mixer(cfg)
            self.rev = Mamba3Mixer(cfg)
            return
        num_ssm_slices = 1 if self.tie == "full" else 2
        self.in_proj = nn.Linear(cfg.d_model, 2 * cfg.d_inner + num_ssm_slices * self.ssm_width, bias=False)
        self.fwd = Mamba3Direction(cfg)
        self.rev = Mamba3Direction(cfg)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=False)

    @property
    def out_projs(self) -> list[nn.Linear]:
        """The output projections (one, or two for ``none``): the residual-branch ends to rescale."""
        if self.tie == "none":
            return [self.fwd.out_proj, self.rev.out_proj]
        return [self.out_proj]

    def project(self, u: torch.Tensor, causal: bool):
        """z, x [*L, d_inner], forward SSM slice, reverse SSM slice (None when causal)."""
        forward_rows = 2 * self.d_inner + self.ssm_width
        weight = self.in_proj.weight[:forward_rows] if causal else self.in_proj.weight
        z, x, ssm = F.linear(u, weight).split([self.d_inner, self.d_inner, weight.shape[0] - 2 * self.d_inner], -1)
        if causal:
            return z, x, ssm, None
        if self.tie == "full":
            return z, x, ssm, ssm
        return z, x, ssm[..., : self.ssm_width], ssm[..., self.ssm_width :]

    def forward_scan_inputs(self, u: torch.Tensor, valid_mask: Optional[torch.Tensor]) -> dict:
        """The forward direction's scan inputs on the normed input u [B, T, D]: what ``forward``
        feeds ``mamba3_scan`` (pads zeroed), for block diffusion's boundary states."""
        if self.tie == "none":  # two independent Mamba3Mixer layers
            _, x, ssm = self.fwd.project(u)
            direction = self.fwd.direction
        else:
            _, x, ssm, _ = self.project(u, causal=True)  # forward rows of the shared in_proj only
            direction = self.fwd
        return direction.scan_inputs(zero_pads(x, valid_mask), ssm)

    def forward(
        self,
        u: torch.Tensor,
        causal: bool = False,
        fwd_initial_state: Optional[Mamba3State] = None,
        return_fwd_state: bool | str = False,
        valid_mask: Optional[torch.Tensor] = None,
    ):
        """u: [B, T, D]; valid_mask: [B, T] bool (False at right padding) or None.

        Returns out [B, T, D], or (out, forward-direction final Mamba3State) with
        ``return_fwd_state``.
        """
        if self.tie == "none":
            out = self.fwd(u, initial_state=fwd_initial_state, return_final_state=return_fwd_state,
                           valid_mask=valid_mask)
            out, state = out if return_fwd_state else (out, None)
            if not causal:
                out = out + self.rev(u, reverse=True, valid_mask=valid_mask)
            return (out, state) if return_fwd_state else out
        z, x, ssm_fwd, ssm_rev = self.project(u, causal)
        x = zero_pads(x, valid_mask)
        if causal or return_fwd_state == "every":
            y, state = self.fwd.scan(x, ssm_fwd, initial_state=fwd_initial_state,
                                     return_final_state=return_fwd_state)
            y_rev = None if causal else self.rev.scan(x, ssm_rev, reverse=True)[0]
        else:  # both directions in one call (on the PyTorch path, one scan over 2B rows)
            y, y_rev, state = mamba3_scan_pair(
                self.fwd.scan_inputs(x, ssm_fwd), self.rev.scan_inputs(x, ssm_rev), self.fwd.D, self.rev.D,
                initial_state=fwd_initial_state, return_final_state=bool(return_fwd_state),
                chunk_size=self.fwd.chunk_size)
        if causal:
            y = self.fwd.gate(y, z)
        elif self.fwd.is_mimo:  # each direction gates its ranks with its own vectors
            y = self.fwd.gate(y, z) + self.rev.gate(y_rev, z)
        else:  # the SISO gate has no parameters: (y_fwd + y_rev) * silu(z), one gate instead of two
            y = self.fwd.gate(y + y_rev, z)
        out = self.out_proj(y)
        return (out, state) if return_fwd_state else out

    def step(self, u_t: torch.Tensor, state: Optional[Mamba3State]):
        """One token of the causal (forward) path: u_t [B, D] -> (out_t [B, D], new state)."""
        if self.tie == "none":
            return self.fwd.step(u_t, state)
        z, x, ssm_fwd, _ = self.project(u_t, causal=True)
        y, state = self.fwd.step(x, z, ssm_fwd, state)
        return self.out_proj(y), state

    def init_state(self, batch: int, device=None, dtype=None) -> Mamba3State:
        """Fresh forward-direction state for ``batch`` sequences (params' device/dtype by default)."""
        if self.tie == "none":
            return self.fwd.init_state(batch, device, dtype)
        weight = self.in_proj.weight
        return self.fwd.init_state(batch, device or weight.device, dtype or weight.dtype)

    def matmul_params(self, causal: bool) -> int:
        """Weights of the projection GEMMs one token goes through (for FLOP estimates)."""
        if self.tie == "none":
            per_mixer = self.fwd.in_proj.weight.numel() + self.fwd.out_proj.weight.numel()
            return per_mixer if causal else 2 * per_mixer
        rows = 2 * self.d_inner + self.ssm_width if causal else self.in_proj.out_features
        return rows * self.in_proj.in_features + self.out_proj.weight.numel()
