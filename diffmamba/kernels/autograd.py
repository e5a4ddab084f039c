"""``torch.autograd.Function`` around the Triton forward scan.

Forward: ``scan_fwd.launch_fwd`` (Triton). Backward: see ``scan_bwd.scan_backward`` for which
backward runs (documented in diffmamba/kernels/README.md). Gradients reach every input (q, k, v, log_decay,
dt, trap, dphase, D), the initial state's four fields, and flow in through the final state's
four fields as well as through y.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .scan_bwd import scan_backward
from .scan_fwd import dot_mode, launch_fwd
from .scan_fwd_split import forward_split


# Tests set this to True so every output buffer starts as NaN: an element the kernel fails to
# write then shows up as a mismatch instead of passing on leftover memory.
POISON_OUTPUTS = False


def new_empty(*shape, device, dtype) -> torch.Tensor:
    """torch.empty, or NaN-filled when POISON_OUTPUTS is set."""
    out = torch.empty(*shape, device=device, dtype=dtype)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


def _rows(chunk_size: int, R: int, N: int) -> int:
    """Rows of the fused forward's chunk for ``chunk_size`` time steps of rank R (as in the
    reference, a chunk holds chunk_size x R rows): rounded up to a power of two, clamped to
    [max(16, R), 128], and to rows x N <= 8192. The last bound is the register budget: the
    program keeps four [rows, N/2] rotated q/k tiles, the [rows, rows] scores and two [N/2, BLOCK_P]
    state halves live. At N = 128, 64 rows make ptxas spill ~1.2 KB per thread on sm_90 and 32 rows
    none (`diffmamba bench resources`), yet 64 rows ran faster: 0.707 ms against 0.907 ms at
    bt16k-h16 bf16 on the H200 (docs/benchmarks.md), half the sequential chunk walk outweighing
    the spills. It changes rounding only. ``DIFFMAMBA_FWD_ROWS`` (a power of two in [16, 128])
    replaces the budget, for A/B timing."""
    rows = 1
    while rows < int(chunk_size) * R:
        rows *= 2
    forced = os.environ.get("DIFFMAMBA_FWD_ROWS")
    if forced is not None:
        if forced not in ("16", "32", "64", "128"):
            raise ValueError(f"DIFFMAMBA_FWD_ROWS must be 16, 32, 64 or 128, got {forced!r}")
        return max(16, min(rows, int(forced)), R)
    budget = 16
    while budget * 2 * max(N, 1) <= 8192:
        budget *= 2
    return max(16, min(rows, 128, budget), R)


def forward_mode() -> str:
    """'fused' (``scan_fwd.py``, default) or 'split' (``scan_fwd_split.py``), from
    ``DIFFMAMBA_SCAN_FWD``; both give the same results, the benchmark says which is faster."""
    mode = os.environ.get("DIFFMAMBA_SCAN_FWD", "fused")
    if mode not in ("fused", "split"):
        raise ValueError(f"DIFFMAMBA_SCAN_FWD must be 'fused' or 'split', got {mode!r}")
    return mode


def scan_forward(q, k, v, a, dt, lam, dph, D, init, reverse, chunk_size, want_final, config=None):
    """Run the Triton forward on contiguous inputs. Returns y and the final state tuple or None.

    q, k: [B, T, H, R, N]; v: [B, T, H, R, P] (rank form); init: 4-tuple (rank form) or None.
    ``config`` forces one autotune entry of the fused kernel (tests).
    """
    B, T, H, R, N = q.shape
    P = v.shape[-1]
    S = dph.shape[-1]
    y = new_empty(*v.shape, device=v.device, dtype=v.dtype)
    if forward_mode() == "split" and config is None:
        return y, forward_split(q, k, v, a, dt, lam, dph, D, init, reverse, chunk_size, want_final, y)
    final = None
    if want_final:
        sdt = torch.float32
        final = (
            new_empty(B, H, P, N, device=q.device, dtype=sdt),
            new_empty(B, H, R, N, device=q.device, dtype=k.dtype),
            new_empty(B, H, R, P, device=q.device, dtype=v.dtype),
            new_empty(B, H, S, device=q.device, dtype=sdt),
        )
    launch_fwd(q, k, v, a, dt, lam, dph, D, y, init, final, R=R, reverse=reverse,
               rows=_rows(chunk_size, R, N), dot=dot_mode(v.dtype, forward=True), config=config)
    return y, final


class Mamba3ScanFn(torch.autograd.Function):
    """y, (ssm, k_prev, v_prev, phase) = scan(q, k, v, a, dt, lam, dphase, D, init state)."""

    @staticmethod
    def forward(ctx, q, k, v, a, dt, lam, dph, D, h0, kp0, vp0, ph0, reverse, chunk_size, want_final):
        has_init = h0 is not None
        init = (h0, kp0, vp0, ph0) if has_init else None
        y, final = scan_forward(q, k, v, a, dt, lam, dph, D, init, reverse, chunk_size, want_final)
        ctx.save_for_backward(q, k, v, a, dt, lam, dph, D, h0, kp0, vp0, ph0)
        ctx.reverse = reverse
        ctx.chunk_size = chunk_size
        ctx.want_final = want_final
        if final is None:
            return y, None, None, None, None
        return (y, *final)

    @staticmethod
    def backward(ctx, dy, dh1, dkp1, dvp1, dph1):
        q, k, v, a, dt, lam, dph, D, h0, kp0, vp0, ph0 = ctx.saved_tensors
        init = (h0, kp0, vp0, ph0) if h0 is not None else None
        dfinal = (dh1, dkp1, dvp1, dph1) if ctx.want_final else None
        grads = scan_backward(q, k, v, a, dt, lam, dph, D, init, dy, dfinal,
                              reverse=ctx.reverse, chunk_size=ctx.chunk_size,
                              needs=ctx.needs_input_grad[:12])
        return (*grads, None, None, None)


def mamba3_scan_autograd(q, k, v, a, dt, lam, dph, D, init: Optional[tuple], reverse: bool,
                         chunk_size: int, want_final: bool):
    """Rank-form entry used by ``diffmamba.kernels.mamba3_scan_triton``."""
    h0, kp0, vp0, ph0 = init if init is not None else (None, None, None, None)
    return Mamba3ScanFn.apply(q, k, v, a, dt, lam, dph, D, h0, kp0, vp0, ph0,
                              bool(reverse), int(chunk_size), bool(want_final))
