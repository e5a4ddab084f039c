"""Triton kernels behind the Mamba-3 scan-op contract (docs/contracts.md §1).

Imported as ``diffmamba.kernels``. ``diffmamba.ops.mamba3_scan`` / ``mamba3_step`` dispatch here on
CUDA tensors; the math, layout and design notes are in kernels/README.md, the oracle is
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

__all__ = ["mamba3_scan_triton", "mamba3_step_triton"]


def _wants_float64(*tensors) -> bool:
    return any(t.dtype == torch.float64 for t in tensors)


def _c(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


def _pad_rank(t: torch.Tensor, rank: int) -> torch.Tensor:
    """Zero rank rows up to ``rank`` (the axis before the last). The kernels lay a chunk out as
    steps x R rows and need R to be a power of two; a zero rank adds nothing to the state, the
    diagonal block or its own (discarded) output, so padding is exact."""
    return torch.nn.functional.pad(t, (0, 0, 0, rank - t.shape[-2])) if t.shape[-2] != rank else t


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
    R = q.shape[3]
    Rp = triton.next_power_of_2(R)
    q, k, v = (_pad_rank(t, Rp) for t in (q, k, v))
    init = None
    if initial_state is not None:
        kp, vp = initial_state.k_prev, initial_state.v_prev
        if siso:
            kp, vp = kp.unsqueeze(2), vp.unsqueeze(2)
        init = (initial_state.ssm.float().contiguous(), _pad_rank(kp, Rp).contiguous(),
                _pad_rank(vp, Rp).contiguous(), initial_state.phase.float().contiguous())
    args = [_c(t) for t in (q, k, v, log_decay.float(), dt.float(), trap.float(), dphase.float(), D)]
    y, h1, kp1, vp1, ph1 = mamba3_scan_autograd(*args, init, reverse, chunk_size, return_final_state)
    y = y.squeeze(3) if siso else y[:, :, :, :R]
    if not return_final_state:
        return y, None
    kp1, vp1 = (kp1.squeeze(2), vp1.squeeze(2)) if siso else (kp1[:, :, :R], vp1[:, :, :R])
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
    Rp = triton.next_power_of_2(R)
    if Rp != R:  # zero rank rows, as in mamba3_scan_triton
        q, k, v, kp, vp = (_pad_rank(t, Rp) for t in (q, k, v, kp, vp))
    y = _autograd.new_empty(*v.shape, device=v.device, dtype=v.dtype)
    kp1 = _autograd.new_empty(B, H, Rp, N, device=q.device, dtype=k.dtype)
    vp1 = _autograd.new_empty(B, H, Rp, P, device=q.device, dtype=v.dtype)
    ph1 = _autograd.new_empty(B, H, S, device=q.device, dtype=torch.float32)
    with torch.no_grad():
        launch_step(*(_c(t) for t in (q, k, v, log_decay.float(), dt.float(), trap.float(),
                                       dphase.float(), D)),
                    y, ssm, _c(kp), _c(vp), ph.float().contiguous(), kp1, vp1, ph1)
    if siso:
        y, kp1, vp1 = y.squeeze(2), kp1.squeeze(2), vp1.squeeze(2)
    else:
        y, kp1, vp1 = y[:, :, :R], kp1[:, :, :R], vp1[:, :, :R]
    return y, Mamba3State(ssm, kp1, vp1, ph1)
