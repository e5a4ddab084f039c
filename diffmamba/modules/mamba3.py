"""One direction of a Mamba-3 layer (docs/mamba3.md §1): projections, BC-norm, biases,
data-dependent decay / trapezoid / rotary angles, gate, and the call into ``diffmamba.ops``.

The layer is split in two so the bidirectional mixer can share what is shareable:

- ``Mamba3Direction`` holds the *per-direction* SSM parameters (dt_bias, B/C norm weights, B/C
  biases, D, MIMO vectors) and turns one direction's slice of the input projection into scan
  inputs, runs the scan and gates the result. It owns no projection matrix.
- ``Mamba3Mixer`` = ``in_proj`` + one ``Mamba3Direction`` + ``out_proj``: a complete
  unidirectional Mamba-3 layer (the ``tie="none"`` building block, and the readable reference).

Glossary (docs/contracts.md): B batch, T time, D d_model, H heads, P headdim, N d_state,
R MIMO rank, S rotary angle pairs. The input projection of one direction is split as

    [z (H*P), x (H*P) | B (R*N), C (R*N), dd_dt (H), dd_A (H), trap (H), angle (S)]
     shared with the    one direction's "SSM slice", width ``ssm_proj_width(cfg)``
     other direction

Everything that feeds a decay or a phase (dt, A, log_decay, lambda, theta, dphase) is computed
in float32 (float64 for a float64 model) whatever the activation dtype.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .norms import RMSNorm
from diffmamba.config import ModelConfig
from diffmamba.ops import Mamba3State, mamba3_scan, mamba3_scan_states, mamba3_step
from diffmamba.ops.scan import fused_step_entry


def ssm_proj_width(cfg: ModelConfig) -> int:
    """Width of one direction's SSM slice of in_proj: 2*R*N + 3*H + S."""
    return 2 * cfg.mimo_rank * cfg.d_state + 3 * cfg.nheads + cfg.num_rope_angles


def heavy_tail(u: torch.Tensor) -> torch.Tensor:
    """f(u) = 1 + u for u >= 0, 1 / (1 - u) for u < 0: positive, C^1 at 0 (docs/mamba3.md §1.2).

    Written without ``torch.where`` so the branch that is not taken cannot produce an inf
    gradient (1 / (1 - u) has a pole at u = 1) that would turn into NaN. relu has gradient 0 at
    u = 0 and the clamp 1 there, so the derivative at 0 is 1, not counted twice.
    """
    return 1.0 + torch.relu(u) + (1.0 / (1.0 - u.clamp(max=0.0)) - 1.0)


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = y, for y > 0 (stable for small y)."""
    return y + torch.log(-torch.expm1(-y))


def scalar_dtype(activation: torch.Tensor) -> torch.dtype:
    """Dtype of decays and phases: float64 for a float64 model, float32 otherwise."""
    return torch.float64 if activation.dtype == torch.float64 else torch.float32


def zero_pads(x: torch.Tensor, valid_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Zero the SSM input at padded positions (x [B, T, d_inner], valid_mask [B, T] bool).

    A zero value leaves the state at 0 through leading pads of the reverse scan and makes the
    trapezoid term of the first real token vanish, so right-padded rows are exact in both
    directions (docs/mamba3.md §5.4). Done after in_proj: pad embeddings are not zero.
    """
    if valid_mask is None:
        return x
    if valid_mask.shape != x.shape[:2] or valid_mask.dtype != torch.bool:
        raise ValueError(
            f"valid_mask must be a bool tensor of shape [B, T] = {list(x.shape[:2])}, "
            f"got {valid_mask.dtype} {list(valid_mask.shape)}"
        )
    return x.masked_fill(~valid_mask[..., None], 0.0)


class Mamba3Direction(nn.Module):
    """Per-direction Mamba-3 parameters and math, from an in_proj slice to the gated output.

    Parameters (init per docs/mamba3.md §1.8): dt_bias [H] = softplus^-1(dt0), dt0 log-uniform in
    [dt_min, dt_max] floored at dt_init_floor; B_norm, C_norm: RMSNorm over N (weight 1);
    B_bias, C_bias [H, R, N] = 1; D [H] = 1; MIMO only: mimo_x [H, R, P] = 1/R,
    mimo_z [H, R, P] = 1, mimo_o [H, R, P] = 1/R.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.nheads, self.headdim, self.d_state = cfg.nheads, cfg.headdim, cfg.d_state
        self.rank, self.num_angles = cfg.mimo_rank, cfg.num_rope_angles
        self.a_floor, self.chunk_size = cfg.a_floor, cfg.chunk_size
        H, R, N, P = self.nheads, self.rank, self.d_state, self.headdim

        log_dt = torch.rand(H) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
        dt0 = torch.exp(log_dt).clamp(min=cfg.dt_init_floor)
        self.dt_bias = nn.Parameter(inverse_softplus(dt0))
        self.B_norm = RMSNorm(N, eps=cfg.norm_eps)
        self.C_norm = RMSNorm(N, eps=cfg.norm_eps)
        # Positive biases matter (zero init costs ~0.85 ppl at 440M, docs/mamba3.md §1.5).
        self.B_bias = nn.Parameter(torch.ones(H, R, N))
        self.C_bias = nn.Parameter(torch.ones(H, R, N))
        self.D = nn.Parameter(torch.ones(H))
        if self.is_mimo:
            self.mimo_x = nn.Parameter(torch.full((H, R, P), 1.0 / R))
            self.mimo_z = nn.Parameter(torch.ones(H, R, P))
            self.mimo_o = nn.Parameter(torch.full((H, R, P), 1.0 / R))

    @property
    def is_mimo(self) -> bool:
        return self.rank > 1

    def scan_inputs(self, x: torch.Tensor, ssm_proj: torch.Tensor) -> dict:
        """The scan op's inputs for any leading axes L (L = [B, T] for a scan, [B] for a step).

        x: [*L, H*P] activation dtype; ssm_proj: [*L, 2*R*N + 3*H + S] (this direction's slice).
        Returns q, k: [*L, H, N] (MIMO [*L, H, R, N]) and v: [*L, H, P] (MIMO [*L, H, R, P]) in
        x's dtype; log_decay, dt, trap: [*L, H] and dphase: [*L, H, S] in float32/float64.
        """
        H, R, N, P, S = self.nheads, self.rank, self.d_state, self.headdim, self.num_angles
        B_proj, C_proj, dd_dt, dd_A, trap, angle = ssm_proj.split([R * N, R * N, H, H, H, S], dim=-1)
        sdt = scalar_dtype(x)
        dt = F.softplus(dd_dt.to(sdt) + self.dt_bias.to(sdt))
        A = -heavy_tail(dd_A.to(sdt)).clamp(min=self.a_floor)
        theta = math.pi * torch.tanh(angle.to(sdt))  # [*L, S] angular rates, shared by all heads
        # B and C are normed per rank over N, broadcast to heads, then biased per head: from
        # here on they are per-head keys and queries.
        k = (self.B_norm(B_proj.unflatten(-1, (R, N))).unsqueeze(-3) + self.B_bias).to(x.dtype)
        q = (self.C_norm(C_proj.unflatten(-1, (R, N))).unsqueeze(-3) + self.C_bias).to(x.dtype)
        v = x.unflatten(-1, (H, P))
        if self.is_mimo:
            v = (v.unsqueeze(-2) * self.mimo_x).to(x.dtype)
        else:
            q, k = q.squeeze(-2), k.squeeze(-2)
        return dict(
            q=q, k=k, v=v,
            log_decay=A * dt,
            dt=dt,
            trap=torch.sigmoid(trap.to(sdt)),
            dphase=dt.unsqueeze(-1) * theta.unsqueeze(-2),
        )

    def gate(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """SISO: y * silu(z). MIMO: sum_r y^(r) * silu(z * mimo_z[:, r]) * mimo_o[:, r].

        y: [*L, H, P] (MIMO [*L, H, R, P]); z: [*L, H*P]. Returns [*L, H*P] in y's dtype.
        """
        z = z.unflatten(-1, (self.nheads, self.headdim))
        if not self.is_mimo:
            return (y * F.silu(z)).flatten(-2)
        gated = y * F.silu(z.unsqueeze(-2) * self.mimo_z) * self.mimo_o
        return gated.sum(dim=-2).to(y.dtype).flatten(-2)

    def scan(
        self,
        x: torch.Tensor,
        ssm_proj: torch.Tensor,
        reverse: bool = False,
        initial_state: Optional[Mamba3State] = None,
        return_final_state: bool | str = False,
    ):
        """The ungated scan output: x [B, T, H*P], ssm_proj [B, T, ssm_proj_width] ->
        (y [B, T, H, P] (MIMO [B, T, H, R, P]), final Mamba3State or None).
        ``reverse`` scans anti-causally (no flips here: the op handles it).

        ``return_final_state="every"`` (forward only) returns instead the continuation state after
        *each* token, a Mamba3State with a T axis after B: speculative decoding verifies a draft in
        one scan and continues from the state after the accepted part, with no second scan.
        """
        every = return_final_state == "every"
        if every and reverse:
            raise ValueError("per-token states exist for the forward (causal) direction only")
        inputs = self.scan_inputs(x, ssm_proj)
        if every:
            return mamba3_scan_states(**inputs, D=self.D, initial_state=initial_state)
        return mamba3_scan(
            **inputs, D=self.D, reverse=reverse, initial_state=initial_state,
            return_final_state=bool(return_final_state), chunk_size=self.chunk_size,
        )

    def forward(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        ssm_proj: torch.Tensor,
        reverse: bool = False,
        initial_state: Optional[Mamba3State] = None,
        return_final_state: bool | str = False,
    ):
        """x, z: [B, T, H*P]; ssm_proj: [B, T, ssm_proj_width]. Returns (gated y [B, T, H*P],
        final Mamba3State or None)."""
        y, state = self.scan(x, ssm_proj, reverse, initial_state, return_final_state)
        return self.gate(y, z), state

    def step(self, x_t: torch.Tensor, z_t: torch.Tensor, ssm_proj_t: torch.Tensor,
             state: Optional[Mamba3State]):
        """One token of the causal recurrence: x_t, z_t [B, H*P], ssm_proj_t [B, width].
        Returns (gated y_t [B, H*P], new state). ``DIFFMAMBA_STEP=fused`` runs all of it in one
        kernel on a GPU (``fused_step_entry``)."""
        fused = fused_step_entry(x_t)
        if fused is not None:
            return fused(ssm_proj_t, x_t, z_t, self.step_params(), state, R=self.rank, N=self.d_state,
                         S=self.num_angles)
        inputs = self.scan_inputs(x_t, ssm_proj_t)
        y_t, state = mamba3_step(
            inputs["q"], inputs["k"], inputs["v"], inputs["log_decay"], inputs["dt"], inputs["trap"],
            inputs["dphase"], self.D, state,
        )
        return self.gate(y_t, z_t), state

    def step_params(self) -> dict:
        """The parameters of ``scan_inputs`` and ``gate``, for the fused step kernel."""
        mimo = self.is_mimo
        return dict(dt_bias=self.dt_bias, b_norm=self.B_norm.weight, c_norm=self.C_norm.weight, b_bias=self.B_bias,
                    c_bias=self.C_bias, D=self.D, mimo_x=self.mimo_x if mimo else None,
                    mimo_z=self.mimo_z if mimo else None, mimo_o=self.mimo_o if mimo else None,
                    a_floor=self.a_floor, eps=self.B_norm.eps)

    def init_state(self, batch: int, device=None, dtype: torch.dtype = torch.float32) -> Mamba3State:
        """A fresh state (equal to starting from nothing) for ``batch`` sequences."""
        return Mamba3State.zeros(
            batch, self.nheads, self.headdim, self.d_state, self.num_angles,
            R=self.rank if self.is_mimo else None, dtype=dtype, device=device,
        )


class Mamba3Mixer(nn.Module):
    """A unidirectional Mamba-3 layer: u [B, T, D] -> [B, T, D].

    out = out_proj(gate(scan(in_proj(u)))); no conv, no activation on x (docs/mamba3.md §1.7).
    ``forward(u, reverse=True)`` is the anti-causal layer (suffix scan).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.d_inner, self.ssm_width = cfg.d_inner, ssm_proj_width(cfg)
        self.in_proj = nn.Linear(cfg.d_model, 2 * cfg.d_inner + self.ssm_width, bias=False)
        self.direction = Mamba3Direction(cfg)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=False)

    def project(self, u: torch.Tensor):
        """u: [*L, D] -> z, x [*L, H*P] and the SSM slice [*L, ssm_proj_width]."""
        return self.in_proj(u).split([self.d_inner, self.d_inner, self.ssm_width], dim=-1)

    def forward(
        self,
        u: torch.Tensor,
        reverse: bool = False,
        initial_state: Optional[Mamba3State] = None,
        return_final_state: bool | str = False,
        valid_mask: Optional[torch.Tensor] = None,
    ):
        """u: [B, T, D]; valid_mask: [B, T] bool (False = right padding) or None.
        Returns out [B, T, D], or (out, final Mamba3State) with ``return_final_state``."""
        z, x, ssm_proj = self.project(u)
        y, state = self.direction(
            zero_pads(x, valid_mask), z, ssm_proj, reverse=reverse, initial_state=initial_state,
            return_final_state=return_final_state,
        )
        out = self.out_proj(y)
        return (out, state) if return_final_state else out

    def step(self, u_t: torch.Tensor, state: Optional[Mamba3State]):
        """One causal token: u_t [B, D] -> (out_t [B, D], new state). ``state=None`` is fresh."""
        z, x, ssm_proj = self.project(u_t)
        y, state = self.direction.step(x, z, ssm_proj, state)
        return self.out_proj(y), state

    def init_state(self, batch: int, device=None, dtype=None) -> Mamba3State:
        weight = self.in_proj.weight
        return self.direction.init_state(batch, device or weight.device, dtype or weight.dtype)
