"""Triton kernels behind the Mamba-3 scan-op contract (docs/contracts.md §1).

Imported as ``diffmamba.kernels``. ``diffmamba.ops.mamba3_scan`` / ``mamba3_step`` dispatch here on
CUDA tensors; the math, layout and design notes are in kernels/README.md, the oracle is
``diffmamba.ops.reference``.
"""

from __future__ import annotations

from typing import Optional

import torch

from diffmamba.ops.state import Mamba3State

from .autograd import mamba3_scan_autograd, scan_forward
from .scan_step import launch_step

__all__ = ["mamba3_scan_triton", "mamba3_step_triton"]


def _c(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


def mamba3_scan_triton(q, k, v, log_decay, dt, trap, dphase, D=None, reverse=False,
                       initial_state: Optional[Mamba3State] = None, return_final_state=False,
                       chunk_size=64):
    """Chunked Mamba-3 scan on the Triton kernels; same arguments and results as
    ``diffmamba.ops.reference.scan_chunked_ref`` (contract §1).

    q, k: [B, T, H, N] or [B, T, H, R, N]; v: [B, T, H, P] or [B, T, H, R, P];
    log_decay, dt, trap: [B, T, H]; dphase: [B, T, H, S]; D: [H] or None.
    ``chunk_size`` counts rows of the intra-chunk block (time steps x R), rounded to a power of
    two in [16, 128]; it changes rounding only. Returns (y, Mamba3State or None). Differentiable
    in every tensor argument, the initial state included.
    """
    siso = q.dim() == 4
    if siso:
        q, k, v = q.unsqueeze(3), k.unsqueeze(3), v.unsqueeze(3)
    init = None
    if initial_state is not None:
        kp, vp = initial_state.k_prev, initial_state.v_prev
        if siso:
            kp, vp = kp.unsqueeze(2), vp.unsqueeze(2)
        init = (initial_state.ssm.float().contiguous(), kp.contiguous(), vp.contiguous(),
                initial_state.phase.float().contiguous())
    args = [_c(t) for t in (q, k, v, log_decay.float(), dt.float(), trap.float(), dphase.float(), D)]
    y, h1, kp1, vp1, ph1 = mamba3_scan_autograd(*args, init, reverse, chunk_size, return_final_state)
    if siso:
        y = y.squeeze(3)
    if not return_final_state:
        return y, None
    if siso:
        kp1, vp1 = kp1.squeeze(2), vp1.squeeze(2)
    return y, Mamba3State(h1, kp1, vp1, ph1)


def mamba3_step_triton(q, k, v, log_decay, dt, trap, dphase, D, state: Optional[Mamba3State]):
    """One decode token on the Triton step kernel (contract §1, ``scan_step_ref`` semantics).

    q, k: [B, H, N] / [B, H, R, N]; v: [B, H, P] / [B, H, R, P]; log_decay, dt, trap: [B, H];
    dphase: [B, H, S]; D: [H] or None; state: Mamba3State or None (fresh).
    ``state.ssm`` is updated in place when it is a contiguous float32 tensor; k_prev, v_prev and
    phase come back in new tensors. Not differentiable (decode only).
    """
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
    y = torch.empty_like(v)
    kp1 = torch.empty(B, H, R, N, device=q.device, dtype=k.dtype)
    vp1 = torch.empty(B, H, R, P, device=q.device, dtype=v.dtype)
    ph1 = torch.empty(B, H, S, device=q.device, dtype=torch.float32)
    with torch.no_grad():
        launch_step(*(_c(t) for t in (q, k, v, log_decay.float(), dt.float(), trap.float(),
                                       dphase.float(), D)),
                    y, ssm, _c(kp), _c(vp), ph.float().contiguous(), kp1, vp1, ph1)
    if siso:
        y, kp1, vp1 = y.squeeze(2), kp1.squeeze(2), vp1.squeeze(2)
    return y, Mamba3State(ssm, kp1, vp1, ph1)
