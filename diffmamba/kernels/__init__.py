"""Triton kernels behind the Mamba-3 scan-op contract (docs/contracts.md §1).

Imported as ``diffmamba.kernels``. ``diffmamba.ops.mamba3_scan`` / ``mamba3_step`` dispatch here on
CUDA tensors; the math, layout and design notes are in diffmamba/kernels/README.md, the oracle is
``diffmamba.ops.reference``.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton

from diffmamba.ops import reference
from diffmamba.ops.state import Mamba3State

from . import autograd as _autograd
from .autograd import mamba3_scan_autograd
from .scan_step import launch_step
from .step_fused import launch_fused_step

__all__ = ["mamba3_scan_triton", "mamba3_step_triton", "mamba3_step_fused"]


def _wants_float64(*tensors) -> bool:
    return any(t.dtype == torch.float64 for t in tensors)


def _c(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


# What the kernels need, reached by zero padding: R a power of two (a chunk is laid out as
# steps x R rows), and on a GPU every tl.dot dimension >= 16, i.e. N/2 pairs >= 16 and P >= 16.
# Padding is exact: a zero rank row or key/query channel adds nothing to the state, the scores or
# the diagonal block, a zero value channel only to its own output, and the padding is sliced off
# the outputs (padded channels lie beyond the 2S rotated ones, so the rotation never mixes them in).
MIN_N, MIN_P = 32, 16


def _padded_sizes(R: int, N: int, P: int) -> tuple[int, int, int]:
    return triton.next_power_of_2(R), max(N, MIN_N), max(P, MIN_P)


def _pad(t: torch.Tensor, *sizes: int) -> torch.Tensor:
    """Zero-pad the last ``len(sizes)`` axes of t up to ``sizes`` (no copy when nothing grows)."""
    grow = [size - have for size, have in zip(sizes, t.shape[-len(sizes):])]
    if not any(grow):
        return t
    spec = []
    for g in reversed(grow):  # F.pad lists the last axis first
        spec += [0, g]
    return torch.nn.functional.pad(t, spec)


def mamba3_scan_triton(q, k, v, log_decay, dt, trap, dphase, D=None, reverse=False,
                       initial_state: Optional[Mamba3State] = None, return_final_state=False,
                       chunk_size=64):
    """Chunked Mamba-3 scan on the Triton kernels; same arguments and results as
    ``diffmamba.ops.reference.scan_chunked_ref`` (contract §1).

    q, k: [B, T, H, N] or [B, T, H, R, N]; v: [B, T, H, P] or [B, T, H, R, P];
    log_decay, dt, trap: [B, T, H]; dphase: [B, T, H, S]; D: [H] or None.
    ``chunk_size`` counts time steps, as in the reference (a chunk has chunk_size x R rows); the
    kernels round the rows to a power of two in [16, 128] (backward: [16, 64]); it changes
    rounding only. Returns (y, Mamba3State or None). Differentiable
    in every tensor argument, the initial state included. float64 inputs (a testing dtype the
    kernels do not compute in) and empty sequences are handed to ``reference.scan_chunked_ref``.
    """
    if _wants_float64(q, k, v, log_decay, dt, trap, dphase) or q.shape[1] == 0:
        # T = 0 has no last token to hand on; the reference decides what that means.
        y, state = reference.scan_chunked_ref(q, k, v, log_decay, dt, trap, dphase, D=D, reverse=reverse,
                                              initial_state=initial_state, chunk_size=chunk_size)
        return y, (state if return_final_state else None)
    siso = q.dim() == 4
    if siso:
        q, k, v = q.unsqueeze(3), k.unsqueeze(3), v.unsqueeze(3)
    R, N, P = q.shape[3], q.shape[4], v.shape[4]
    Rp, Np, Pp = _padded_sizes(R, N, P)
    q, k, v = _pad(q, Rp, Np), _pad(k, Rp, Np), _pad(v, Rp, Pp)
    init = None
    if initial_state is not None:
        kp, vp = initial_state.k_prev, initial_state.v_prev
        if siso:
            kp, vp = kp.unsqueeze(2), vp.unsqueeze(2)
        init = (_pad(initial_state.ssm.float(), Pp, Np).contiguous(), _pad(kp, Rp, Np).contiguous(),
                _pad(vp, Rp, Pp).contiguous(), initial_state.phase.float().contiguous())
    args = [_c(t) for t in (q, k, v, log_decay.float(), dt.float(), trap.float(), dphase.float(), D)]
    y, h1, kp1, vp1, ph1 = mamba3_scan_autograd(*args, init, reverse, chunk_size, return_final_state)
    # .contiguous(): a no-op unless padding was sliced off (callers may .view() the results)
    y = y[:, :, :, :R, :P].contiguous()
    if siso:
        y = y.squeeze(3)
    if not return_final_state:
        return y, None
    h1, kp1, vp1 = (t.contiguous() for t in (h1[:, :, :P, :N], kp1[:, :, :R, :N], vp1[:, :, :R, :P]))
    if siso:
        kp1, vp1 = kp1.squeeze(2), vp1.squeeze(2)
    return y, Mamba3State(h1, kp1, vp1, ph1)


def mamba3_step_triton(q, k, v, log_decay, dt, trap, dphase, D, state: Optional[Mamba3State]):
    """One decode token on the Triton step kernel (contract §1, ``scan_step_ref`` semantics).

    q, k: [B, H, N] / [B, H, R, N]; v: [B, H, P] / [B, H, R, P]; log_decay, dt, trap: [B, H];
    dphase: [B, H, S]; D: [H] or None; state: Mamba3State or None (fresh).
    ``state.ssm`` is updated in place when it is a contiguous float32 tensor; k_prev, v_prev and
    phase come back in new tensors. The kernel has no backward: when autograd is recording and an
    input requires grad, or for float64 inputs, the step runs ``reference.scan_step_ref`` instead.
    """
    tensors = [q, k, v, log_decay, dt, trap, dphase, D] + (list(state) if state is not None else [])
    if _wants_float64(q, k, v, log_decay, dt, trap, dphase) or (
        torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    ):
        return reference.scan_step_ref(q, k, v, log_decay, dt, trap, dphase, D=D, state=state)
    siso = q.dim() == 3
    if siso:
        q, k, v = q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2)
    B, H, R, N = q.shape
    P = v.shape[-1]
    S = dphase.shape[-1]
    if state is None:
        state = Mamba3State.zeros(B, H, P, N, S, R=R, dtype=k.dtype, device=q.device)
        ssm, kp, vp, ph = state
    else:
        ssm, kp, vp, ph = state
        if siso:
            kp, vp = kp.unsqueeze(2), vp.unsqueeze(2)
        if ssm.dtype != torch.float32 or not ssm.is_contiguous():
            ssm = ssm.float().contiguous()
    Rp, Np, Pp = _padded_sizes(R, N, P)  # zero padding, as in mamba3_scan_triton
    q, k, v = _pad(q, Rp, Np), _pad(k, Rp, Np), _pad(v, Rp, Pp)
    kp, vp = _pad(kp.reshape(B, H, R, N), Rp, Np), _pad(vp.reshape(B, H, R, P), Rp, Pp)
    ssm_k = _pad(ssm, Pp, Np).contiguous()  # ssm itself when nothing is padded
    y = _autograd.new_empty(*v.shape, device=v.device, dtype=v.dtype)
    kp1 = _autograd.new_empty(B, H, Rp, Np, device=q.device, dtype=k.dtype)
    vp1 = _autograd.new_empty(B, H, Rp, Pp, device=q.device, dtype=v.dtype)
    ph1 = _autograd.new_empty(B, H, S, device=q.device, dtype=torch.float32)
    with torch.no_grad():
        launch_step(*(_c(t) for t in (q, k, v, log_decay.float(), dt.float(), trap.float(),
                                       dphase.float(), D)),
                    y, ssm_k, _c(kp), _c(vp), ph.float().contiguous(), kp1, vp1, ph1)
        if ssm_k is not ssm:
            ssm.copy_(ssm_k[:, :, :P, :N])
    y, kp1, vp1 = (t.contiguous() for t in (y[:, :, :R, :P], kp1[:, :, :R, :N], vp1[:, :, :R, :P]))
    if siso:
        y, kp1, vp1 = y.squeeze(2), kp1.squeeze(2), vp1.squeeze(2)
    return y, Mamba3State(ssm, kp1, vp1, ph1)


def mamba3_step_fused(proj, x, z, params: dict, state: Optional[Mamba3State], *, R: int, N: int, S: int):
    """One decode token of a Mamba-3 direction in one kernel (``step_fused.py``): the input transform
    from the projection row, the step and the gate (``Mamba3Direction.step`` semantics).

    proj: [B, >= 2RN + 3H + S] (its first 2RN + 3H + S columns: B, C, dd_dt, dd_A, trap, angles);
    x, z: [B, H*P] (views of one projection are fine: rows may be strided, columns must be
    contiguous); params: as ``launch_fused_step``; state: Mamba3State (SISO or rank form, as the
    direction's ``init_state``) or None (fresh). Returns (gated y [B, H*P] in x's dtype, new state):
    ``state.ssm`` is updated in place when it is a contiguous float32 tensor.
    """
    B, HP = x.shape
    H = params["dt_bias"].shape[0]
    P = HP // H
    if z.stride(0) != x.stride(0) or x.stride(1) != 1 or z.stride(1) != 1 or proj.stride(1) != 1:
        x, z, proj = x.contiguous(), z.contiguous(), proj.contiguous()  # then both [B, H*P] rows
    if state is None:
        state = Mamba3State.zeros(B, H, P, N, S, R=R if R > 1 else None, dtype=x.dtype, device=x.device)
    ssm, kp, vp, ph = state
    siso = kp.dim() == 3
    if ssm.dtype != torch.float32 or not ssm.is_contiguous():
        ssm = ssm.float().contiguous()
    out = _autograd.new_empty(B, HP, device=x.device, dtype=x.dtype)
    kp1 = _autograd.new_empty(B, H, R, N, device=x.device, dtype=kp.dtype)
    vp1 = _autograd.new_empty(B, H, R, P, device=x.device, dtype=vp.dtype)
    ph1 = _autograd.new_empty(B, H, S, device=x.device, dtype=torch.float32)
    with torch.no_grad():
        launch_fused_step(proj, x, z, params, ssm, _c(kp), _c(vp), ph.float().contiguous(), out, kp1, vp1, ph1,
                          R=R, N=N, P=P, S=S, H=H)
    if siso:
        kp1, vp1 = kp1.squeeze(2), vp1.squeeze(2)
    return out, Mamba3State(ssm, kp1, vp1, ph1)
