"""The scan's pre-pass: rotation, trapezoid scale and the same-step q . k (Triton), and the phase
prefix sums and scales it needs (PyTorch, ``phase_and_scales``).

The backward (``scan_bwd.py``) and the split forward (``scan_fwd_split.py``) split the scan into
this elementwise pre-pass and the core decayed recurrence (``core.py``). Per row (time step t, rank r; rows are the flattened
[B, T, H, R] index, so no time order is involved and ``reverse`` needs no special case):

  forward   qr = R(Phi_t) q,  K' = R(Phi_t) k * scale_t,  qk_t[r, s] = q_r . k_s  (same step)
  backward  dq = R(Phi_t)^T dqr + gamma_t sum_s dc_t[r, s] k_s
            dk = R(Phi_t)^T (scale_t dK') + gamma_t sum_r dc_t[r, s] q_r
            dPhi_t[i] += (qr x dqr)_i + (kr x dkr)_i     (pairs i < S; x: 2-D cross product)
            dscale_t  += dK' . kr

where R(Phi) rotates the pairs (2i, 2i+1), i < S, and dc is the gradient of the same-step
diagonal block c = gamma qk + D (the rotation cancels at equal times, so qk uses the unrotated
q, k, as the reference does). dPhi and dscale come back per row; the caller sums the R ranks of
a step. The phase Phi, the scales and everything on [B, T, H]-sized tensors stay in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from diffmamba.ops.reference import TWO_PI

from .scan_fwd import _load_pair, _rotate

PHASE_CHUNK = 64  # steps per float32 partial sum of the phase; the carry between them is float64


@triton.jit
def _pair_masks(ok, j, N: tl.constexpr):
    # odd N: the last even element has no partner (it is never rotated, S <= N // 2)
    return ok[:, None] & (2 * j < N)[None, :], ok[:, None] & (2 * j + 1 < N)[None, :]


@triton.jit
def _load_pairs(ptr, rows, j, ok, N: tl.constexpr):
    me, mo = _pair_masks(ok, j, N)
    return _load_pair(ptr, rows[:, None] * N + 2 * j[None, :], me, mo)


@triton.jit
def _store_pairs(ptr, rows, j, ok, even, odd, N: tl.constexpr):
    me, mo = _pair_masks(ok, j, N)
    tl.store(ptr + rows[:, None] * N + 2 * j[None, :], even, mask=me)
    tl.store(ptr + rows[:, None] * N + 2 * j[None, :] + 1, odd, mask=mo)


@triton.jit
def _load_rows(q_ptr, k_ptr, ph_ptr, sc_ptr, n_rows, R: tl.constexpr, N: tl.constexpr,
               S: tl.constexpr, HALF: tl.constexpr, ROWS: tl.constexpr):
    """This program's ROWS flattened rows: offsets, validity, step index, pair index, cos / sin
    of the step's angles (pairs >= S: angle 0), the q and k pairs, the step's scale."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    ok = rows < n_rows
    step = rows // R
    j = tl.arange(0, HALF)
    phi = tl.load(ph_ptr + step[:, None] * S + j[None, :], mask=ok[:, None] & (j < S)[None, :], other=0.0)
    qe, qo = _load_pairs(q_ptr, rows, j, ok, N)
    ke, ko = _load_pairs(k_ptr, rows, j, ok, N)
    sc = tl.load(sc_ptr + step, mask=ok, other=0.0)[:, None]
    return rows, ok, step, j, tl.cos(phi), tl.sin(phi), qe, qo, ke, ko, sc


@triton.jit
def _same_step(rows, step, ok, R: tl.constexpr):
    """[ROWS, ROWS] mask of row pairs in one step, and the offsets of dc/qk [.., R, R] there."""
    same = (step[:, None] == step[None, :]) & ok[:, None] & ok[None, :]
    off = step[:, None] * R * R + (rows % R)[:, None] * R + (rows % R)[None, :]
    return same, off


@triton.jit
def _prepass_fwd(q_ptr, k_ptr, ph_ptr, sc_ptr, qr_ptr, kp_ptr, qk_ptr, n_rows,
                 R: tl.constexpr, N: tl.constexpr, S: tl.constexpr, HALF: tl.constexpr,
                 ROWS: tl.constexpr):
    rows, ok, step, j, cs, sn, qe, qo, ke, ko, sc = _load_rows(
        q_ptr, k_ptr, ph_ptr, sc_ptr, n_rows, R, N, S, HALF, ROWS)
    qre, qro = _rotate(qe, qo, cs, sn)
    kre, kro = _rotate(ke, ko, cs, sn)
    _store_pairs(qr_ptr, rows, j, ok, qre, qro, N)
    _store_pairs(kp_ptr, rows, j, ok, kre * sc, kro * sc, N)
    if R == 1:
        tl.store(qk_ptr + rows, tl.sum(qe * ke + qo * ko, axis=1), mask=ok)
    else:
        blk = (tl.dot(qe, tl.trans(ke), input_precision="ieee")
               + tl.dot(qo, tl.trans(ko), input_precision="ieee"))
        same, off = _same_step(rows, step, ok, R)
        tl.store(qk_ptr + off, blk, mask=same)


@triton.jit
def _prepass_bwd(q_ptr, k_ptr, ph_ptr, sc_ptr, gam_ptr, dqr_ptr, dkp_ptr, dc_ptr,
                 dq_ptr, dk_ptr, dphi_ptr, dsc_ptr, n_rows,
                 R: tl.constexpr, N: tl.constexpr, S: tl.constexpr, HALF: tl.constexpr,
                 ROWS: tl.constexpr):
    rows, ok, step, j, cs, sn, qe, qo, ke, ko, sc = _load_rows(
        q_ptr, k_ptr, ph_ptr, sc_ptr, n_rows, R, N, S, HALF, ROWS)
    gam = tl.load(gam_ptr + step, mask=ok, other=0.0)
    dqre, dqro = _load_pairs(dqr_ptr, rows, j, ok, N)
    dkpe, dkpo = _load_pairs(dkp_ptr, rows, j, ok, N)
    qre, qro = _rotate(qe, qo, cs, sn)
    kre, kro = _rotate(ke, ko, cs, sn)
    dkre = dkpe * sc
    dkro = dkpo * sc
    # d/dPhi of a rotated pair (x', y') = (x cos - y sin, x sin + y cos) is (-y', x')
    dphi = qre * dqro - qro * dqre + kre * dkro - kro * dkre
    tl.store(dphi_ptr + rows[:, None] * S + j[None, :], dphi, mask=ok[:, None] & (j < S)[None, :])
    tl.store(dsc_ptr + rows, tl.sum(dkpe * kre + dkpo * kro, axis=1), mask=ok)
    # rotation is orthogonal: the adjoint rotates back by -Phi
    dqe, dqo = _rotate(dqre, dqro, cs, -sn)
    dke, dko = _rotate(dkre, dkro, cs, -sn)
    # same-step diagonal block y_r += gamma sum_s qk[r, s] v_s: dq_r += gamma sum_s dc[r, s] k_s,
    # dk_s += gamma sum_r dc[r, s] q_r
    if R == 1:
        d = (tl.load(dc_ptr + rows, mask=ok, other=0.0) * gam)[:, None]
        dqe += d * ke
        dqo += d * ko
        dke += d * qe
        dko += d * qo
    else:
        same, off = _same_step(rows, step, ok, R)
        dcb = tl.load(dc_ptr + off, mask=same, other=0.0) * gam[:, None]
        dqe += tl.dot(dcb, ke, input_precision="ieee")
        dqo += tl.dot(dcb, ko, input_precision="ieee")
        dke += tl.dot(tl.trans(dcb), qe, input_precision="ieee")
        dko += tl.dot(tl.trans(dcb), qo, input_precision="ieee")
    _store_pairs(dq_ptr, rows, j, ok, dqe, dqo, N)
    _store_pairs(dk_ptr, rows, j, ok, dke, dko, N)


def cumulative_phase(dph, ph0, reverse, chunk=PHASE_CHUNK):
    """Phi [B, T, H, S] float32 in [0, 2pi): prefix sums of dph [B, T, H, S] (suffix sums in
    reverse) plus ph0 [B, H, S] or None, differentiable.

    Float32 sums within chunks of ``chunk`` steps on top of a carry kept mod 2pi, the carry (the
    chunk totals, T / chunk of them) summed in float64, so angles do not drift over long T: the
    error is that of a float32 sum of ``chunk`` terms, whatever T. A single float64 cumsum over T
    instead runs one sequential thread per (b, h, s) column on the GPU: 1.6 ms of the 5.1 ms
    backward at bt16k-h16 on the H200 (docs/benchmarks.md).
    """
    B, T, H, S = dph.shape
    x = dph.float()
    x = x.flip(1) if reverse else x
    nc = -(-T // chunk)
    chunks = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, nc * chunk - T)).view(B, nc, chunk, H, S)
    local = chunks.cumsum(2)
    # totals summed in float64 too: float32 totals would carry each chunk's rounding into all later ones
    totals = chunks.double().sum(2)  # [B, nc, H, S]
    carry = totals.cumsum(1) - totals  # phase entering each chunk
    if ph0 is not None:
        carry = carry + ph0.double().unsqueeze(1)
    carry = torch.remainder(carry, TWO_PI).float()
    phase = torch.remainder(carry.unsqueeze(2) + local, TWO_PI).view(B, nc * chunk, H, S)[:, :T]
    return phase.flip(1) if reverse else phase


def phase_and_scales(dt, lam, dph, ph0, reverse):
    """Differentiable [B, T, H]-sized part of the pre-pass (reference semantics, physical order).

    dt, lam: [B, T, H]; dph: [B, T, H, S]; ph0: [B, H, S] or None. Returns the cumulative phase
    [B, T, H, S] (``cumulative_phase``; reverse: suffix sums, the logical order being the mirrored
    physical one), gamma, beta and the shifted scale gamma + beta~ (beta of the next logical step:
    physical t + 1, or t - 1 in reverse).
    """
    phase = cumulative_phase(dph, ph0, reverse)
    gamma = lam * dt
    beta = (1.0 - lam) * dt
    zero = beta.new_zeros(beta.shape[0], 1, beta.shape[2])
    ahead = torch.cat((zero, beta[:, :-1]), 1) if reverse else torch.cat((beta[:, 1:], zero), 1)
    return phase, gamma, beta, gamma + ahead


def entry_state(ssm0, kp0, vp0, beta, first: int):
    """G_0 = ssm0 + beta_first sum_r vp0_r kp0_r^T [B, H, P, N]: the initial state with the
    trapezoid term owed by the cached previous token (beta of the first logical step)."""
    return ssm0 + beta[:, first, :, None, None] * (vp0.transpose(-1, -2) @ kp0)


def _launch_meta(q, S):
    B, T, H, R, N = q.shape
    half = triton.next_power_of_2(max((N + 1) // 2, 1))
    # [rows, N/2] tiles of <= 1024 fp32 per operand: about ten are live (q, k pairs, cos, sin,
    # their adjoints), which at 4 warps is what fits in registers; 4096 spilled on sm_90 (the
    # pre-pass kernels used all 255 registers and 1.3 KB of local memory per thread, see
    # `diffmamba bench resources`)
    rows = max(16, R, min(64, 1024 // half))
    n_rows = B * T * H * R
    return dict(R=R, N=N, S=S, HALF=half, ROWS=rows), n_rows, (triton.cdiv(n_rows, rows),)


def prepass_forward(q, k, phase, scale):
    """qr, K' [B, T, H, R, N] float32 and the same-step q . k [B, T, H, R, R] float32.

    q, k: [B, T, H, R, N] (any float dtype; odd N: the last lane has no partner); phase: [B, T, H, S] float32 in [0, 2pi);
    scale: [B, T, H] float32. All contiguous.
    """
    meta, n_rows, grid = _launch_meta(q, phase.shape[-1])
    qr = torch.empty(q.shape, device=q.device, dtype=torch.float32)
    kp = torch.empty_like(qr)
    qk = torch.empty(*q.shape[:4], q.shape[3], device=q.device, dtype=torch.float32)
    ph = phase if phase.numel() else scale  # S = 0: nothing is loaded; avoid a null pointer
    _prepass_fwd[grid](q, k, ph, scale, qr, kp, qk, n_rows, **meta)
    return qr, kp, qk


def prepass_backward(q, k, phase, scale, gamma, dqr, dkp, dc):
    """dq, dk [B, T, H, R, N] float32, dPhi [B, T, H, S] and dscale [B, T, H] (ranks summed).

    dqr, dkp: the core's gradients of qr and K' (float32); dc [B, T, H, R, R] float32: gradient
    of the same-step block c = gamma qk + D. Other arguments as ``prepass_forward``.
    """
    meta, n_rows, grid = _launch_meta(q, phase.shape[-1])
    B, T, H, R, N = q.shape
    S = phase.shape[-1]
    dq = torch.empty(q.shape, device=q.device, dtype=torch.float32)
    dk = torch.empty_like(dq)
    dphi = torch.empty(B, T, H, R, S, device=q.device, dtype=torch.float32)
    dsc = torch.empty(B, T, H, R, device=q.device, dtype=torch.float32)
    ph, dph = (phase, dphi) if S else (scale, dsc)  # S = 0: nothing is loaded or stored there
    _prepass_bwd[grid](q, k, ph, scale, gamma, dqr, dkp, dc, dq, dk, dph, dsc, n_rows, **meta)
    return dq, dk, dphi.sum(3), dsc.sum(3)
