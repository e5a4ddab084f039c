"""Triton forward kernel of the chunked Mamba-3 scan (SISO and MIMO, both directions).

Reference: ``diffmamba.ops.reference.scan_chunked_ref`` (chunked form) and
``scan_recurrent_ref`` (per-token recurrence); the math is written out in ``diffmamba/kernels/README.md``
and docs/mamba3.md §2.2-2.4.

Design: one program per (batch, head, value block) walks all chunks of its sequence in order
and carries the fp32 state [N, BLOCK_P] in registers (as the official SISO kernel does), so no
chunk states ever touch HBM. Per chunk of ROWS = C*R rows (C time steps times R ranks):

  rotary pre-pass   Phi = carry + cumsum(dphase) (fp32, mod 2pi); qr, kr = R(Phi) q, R(Phi) k
  trapezoid scales  gamma_t = lam_t dt_t ; scale_t = gamma_t + (1 - lam_{t+1}) dt_{t+1}
  intra-chunk       y += ((qr kr^T) * W) v,  W_ij = scale_j exp(l_i - l_j) for t(j) < t(i),
                    gamma_i for t(j) == t(i) (the MIMO R x R diagonal block; SISO: i == j)
  inter-chunk       y += exp(l_i) qr_i h^T ;  D skip y += D v
  state passing     h <- exp(l_last) h + sum_j scale_j exp(l_last - l_j) kr_j v_j^T

``reverse=True`` mirrors the time index (logical step s reads physical step T-1-s): the phase
becomes a suffix sum and the trapezoid shift looks one physical token back, with no flipped
copies of any tensor. The rotary pairs are (2i, 2i+1), i < S: q/k are loaded as even and odd
halves [rows, N/2] and the state is kept as two halves [N/2, BLOCK_P] to match.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .configs import forward_configs, interpreting

TWO_PI = 6.283185307179586


@triton.jit
def _mod_2pi(x):
    # floor-based reduction keeps the phase in [0, 2pi) so cos/sin see small arguments.
    return x - 6.283185307179586 * tl.floor(x * 0.15915494309189535)


@triton.jit
def _load_pair(ptr, off, even_mask, odd_mask):
    """The interleaved pairs whose even elements sit at ``off``, as fp32 even and odd halves
    (strided loads; separate masks because with odd N the last even element has no partner)."""
    even = tl.load(ptr + off, mask=even_mask, other=0.0).to(tl.float32)
    odd = tl.load(ptr + off + 1, mask=odd_mask, other=0.0).to(tl.float32)
    return even, odd


@triton.jit
def _rotate(even, odd, cs, sn):
    """The rotary pairs (even, odd) rotated by the angle whose cos / sin are given (pass -sn for
    the inverse rotation, the adjoint)."""
    return even * cs - odd * sn, even * sn + odd * cs


# How the fp32 [rows, N] x [N, P] products run (the DOT constexpr of every kernel; chosen by
# ``dot_mode`` from the I/O dtype). Tensor cores want bf16 / fp16 / TF32 operands; an IEEE fp32
# tl.dot is lowered to FMA loops that, at N = 128, need more registers than sm_90 has (ptxas left
# the fp32 fused forward with 56 KB of local memory per thread, `diffmamba bench resources`).
DOT_IEEE = 0  # exact fp32 operands: the interpreter's stand-in for DOT_TF32X3
DOT_TF32 = 1  # TF32 tensor cores (10-bit mantissa operands, fp32 accumulate): bf16 I/O backward
DOT_TF32_EMU = 2  # TF32 emulated by operand truncation + IEEE dot: the interpreter measures its error
DOT_TF32X3 = 3  # 3-pass TF32 (hi*hi + hi*lo + lo*hi): ~fp32 accuracy on tensor cores, fp32 I/O
DOT_TF32X3_EMU = 4  # the same split, emulated
DOT_BF16 = 5  # bf16 operands, fp32 accumulate: bf16 I/O forward (as the official kernels do)


def dot_mode(io_dtype: torch.dtype, *, forward: bool) -> int:
    """The DOT constexpr for a scan whose q/k/v are ``io_dtype``.

    fp32 I/O: TF32X3 in both passes. bf16 I/O: bf16 operands in the forward, TF32 in the
    backward (its operands are fp32 products of bf16 inputs, and IEEE would run on the fp32 FMA
    units, see docs/benchmarks.md). fp16 I/O: TF32. ``DIFFMAMBA_BWD_TF32=0`` / ``=1`` forces the
    backward to IEEE / TF32. Under the interpreter the TF32 modes are emulated (so the CPU tests
    measure their error) and bf16 operands run as IEEE.
    """
    if io_dtype == torch.float32:
        mode = DOT_TF32X3
    elif forward and io_dtype == torch.bfloat16:
        mode = DOT_BF16
    else:
        mode = DOT_TF32
    forced = None if forward else os.environ.get("DIFFMAMBA_BWD_TF32")
    if forced is not None:
        mode = DOT_TF32 if forced == "1" else DOT_IEEE
    if interpreting():
        mode = {DOT_TF32: DOT_TF32_EMU, DOT_TF32X3: DOT_TF32X3_EMU, DOT_BF16: DOT_IEEE}.get(mode, mode)
    return mode


@triton.jit
def _tf32(x):
    # What a TF32 tensor core reads of an fp32 value: the low 13 mantissa bits dropped (truncation,
    # the worse of the two roundings hardware may use), leaving 10 explicit bits.
    return (x.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def _dot(a, b, DOT: tl.constexpr):
    """a @ b for fp32 tiles a, b, fp32 result, in the DOT_* mode above (a jit function reads
    no plain module globals, so the branches spell the numbers out)."""
    if DOT == 5:  # DOT_BF16
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)
    elif DOT == 1:  # DOT_TF32
        return tl.dot(a, b, input_precision="tf32")
    elif DOT == 2:  # DOT_TF32_EMU
        return tl.dot(_tf32(a), _tf32(b), input_precision="ieee")
    elif DOT == 3:  # DOT_TF32X3
        return tl.dot(a, b, input_precision="tf32x3")
    elif DOT == 4:  # DOT_TF32X3_EMU
        a_hi = _tf32(a)
        b_hi = _tf32(b)
        a_lo = _tf32(a - a_hi)
        b_lo = _tf32(b - b_hi)
        return (tl.dot(a_hi, b_lo, input_precision="ieee") + tl.dot(a_lo, b_hi, input_precision="ieee")
                + tl.dot(a_hi, b_hi, input_precision="ieee"))
    else:  # DOT_IEEE
        return tl.dot(a, b, input_precision="ieee")


def _fwd_kernel_impl(
    q_ptr, k_ptr, v_ptr, a_ptr, dt_ptr, lam_ptr, dph_ptr, D_ptr, y_ptr,
    h0_ptr, kp0_ptr, vp0_ptr, ph0_ptr,
    h1_ptr, kp1_ptr, vp1_ptr, ph1_ptr,
    T, H,
    R: tl.constexpr, N: tl.constexpr, P: tl.constexpr, S: tl.constexpr,
    HALF: tl.constexpr, BLOCK_P: tl.constexpr, ROWS: tl.constexpr,
    REVERSE: tl.constexpr, HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr,
    HAS_D: tl.constexpr, DOT: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_p = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    CT: tl.constexpr = ROWS // R  # time steps per chunk

    rows = tl.arange(0, ROWS)
    t_loc = rows // R
    r_idx = rows % R
    first_rank = r_idx == 0
    j = tl.arange(0, HALF)  # pair index: elements 2j, 2j+1
    e_ok = 2 * j < N  # odd N: the last even element has no partner (it is never rotated, S <= N // 2)
    o_ok = 2 * j + 1 < N
    rot_ok = j < S
    pp = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = pp < P

    # ---- carried state: phase [HALF] and h^T split into even/odd key halves [HALF, BLOCK_P] ----
    if HAS_INIT:
        carry = tl.load(ph0_ptr + (b * H + h) * S + j, mask=rot_ok, other=0.0).to(tl.float32)
        hbase = h0_ptr + (b * H + h) * P * N
        hT_e, hT_o = _load_pair(hbase + pp[None, :] * N, 2 * j[:, None],
                                e_ok[:, None] & p_ok[None, :], o_ok[:, None] & p_ok[None, :])
        # Trapezoid term of the first step from the cached previous token:
        # (1 - lam_0) dt_0 k_prev v_prev^T is added before the first decay (docs/mamba3.md §2.1).
        t0 = T - 1 if REVERSE else 0
        sc0 = (b * T + t0) * H + h
        beta0 = (1.0 - tl.load(lam_ptr + sc0).to(tl.float32)) * tl.load(dt_ptr + sc0).to(tl.float32)
        rr = tl.arange(0, R)
        kpb = kp0_ptr + (b * H + h) * R * N + rr[:, None] * N
        kp_e, kp_o = _load_pair(kpb, 2 * j[None, :], e_ok[None, :], o_ok[None, :])
        vp = tl.load(vp0_ptr + (b * H + h) * R * P + rr[:, None] * P + pp[None, :],
                     mask=p_ok[None, :], other=0.0).to(tl.float32)
        hT_e += beta0 * tl.sum(kp_e[:, :, None] * vp[:, None, :], axis=0)
        hT_o += beta0 * tl.sum(kp_o[:, :, None] * vp[:, None, :], axis=0)
    else:
        carry = tl.zeros([HALF], dtype=tl.float32)
        hT_e = tl.zeros([HALF, BLOCK_P], dtype=tl.float32)
        hT_o = tl.zeros([HALF, BLOCK_P], dtype=tl.float32)

    if HAS_D:
        Dh = tl.load(D_ptr + h).to(tl.float32)
    else:
        Dh = 0.0

    n_chunks = tl.cdiv(T, CT)
    for c in range(0, n_chunks):
        s_log = c * CT + t_loc  # logical step of each row
        ok = s_log < T
        if REVERSE:
            t_phys = T - 1 - s_log
            t_next = t_phys - 1
        else:
            t_phys = s_log
            t_next = s_log + 1
        nxt_ok = (s_log + 1) < T
        sc = (b * T + t_phys) * H + h
        scn = (b * T + t_next) * H + h

        # ---- per-step scalars (fp32), repeated over the R rank rows of a step ----
        a = tl.load(a_ptr + sc, mask=ok, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + sc, mask=ok, other=0.0).to(tl.float32)
        lam = tl.load(lam_ptr + sc, mask=ok, other=0.0).to(tl.float32)
        dt_n = tl.load(dt_ptr + scn, mask=nxt_ok, other=0.0).to(tl.float32)
        lam_n = tl.load(lam_ptr + scn, mask=nxt_ok, other=0.0).to(tl.float32)
        gamma = lam * dt
        scale = gamma + (1.0 - lam_n) * dt_n  # zero look-ahead after the last step
        # chunk-local inclusive cumsum of the log decay (reset per chunk, docs/mamba3.md §6.1); counting only the
        # first rank row of each step makes every rank row of step t see sum_{s<=t} a_s.
        l = tl.cumsum(tl.where(first_rank, a, 0.0), axis=0)
        l_last = tl.sum(tl.where(first_rank, a, 0.0), axis=0)

        # ---- rotary phase ----
        dph = tl.load(dph_ptr + sc[:, None] * S + j[None, :],
                      mask=(ok & first_rank)[:, None] & rot_ok[None, :], other=0.0).to(tl.float32)
        phi = _mod_2pi(carry[None, :] + tl.cumsum(dph, axis=0))
        carry = _mod_2pi(carry + tl.sum(dph, axis=0))
        cs = tl.cos(phi)
        sn = tl.sin(phi)

        # ---- q, k as even/odd halves, rotated in fp32 ----
        row_off = ((b * T + t_phys) * H + h) * R + r_idx
        e_mask = ok[:, None] & e_ok[None, :]
        o_mask = ok[:, None] & o_ok[None, :]
        qkb = row_off[:, None] * N + 2 * j[None, :]
        qe, qo = _load_pair(q_ptr, qkb, e_mask, o_mask)
        ke, ko = _load_pair(k_ptr, qkb, e_mask, o_mask)
        qre, qro = _rotate(qe, qo, cs, sn)
        kre, kro = _rotate(ke, ko, cs, sn)
        v_mask = ok[:, None] & p_ok[None, :]
        vv = tl.load(v_ptr + row_off[:, None] * P + pp[None, :], mask=v_mask, other=0.0).to(tl.float32)

        # ---- intra-chunk: masked, decayed scores (every exponent <= 0, docs/mamba3.md §6.2) ----
        scores = _dot(qre, tl.trans(kre), DOT) + _dot(qro, tl.trans(kro), DOT)
        ti = t_loc[:, None]
        tj = t_loc[None, :]
        decay = tl.exp(tl.minimum(l[:, None] - l[None, :], 0.0))
        w = tl.where(tj < ti, scale[None, :] * decay, tl.where(tj == ti, gamma[:, None], 0.0))
        y = _dot(scores * w, vv, DOT)
        # ---- inter-chunk: state entering the chunk, decayed to each row ----
        y += tl.exp(l)[:, None] * (_dot(qre, hT_e, DOT) + _dot(qro, hT_o, DOT))
        y += Dh * vv
        tl.store(y_ptr + row_off[:, None] * P + pp[None, :], y.to(y_ptr.dtype.element_ty), mask=v_mask)

        # ---- state passing ----
        kw = scale * tl.exp(l_last - l)
        dec = tl.exp(l_last)
        hT_e = dec * hT_e + _dot(tl.trans(kre * kw[:, None]), vv, DOT)
        hT_o = dec * hT_o + _dot(tl.trans(kro * kw[:, None]), vv, DOT)

    if STORE_FINAL:
        hbase1 = h1_ptr + (b * H + h) * P * N
        tl.store(hbase1 + pp[None, :] * N + 2 * j[:, None], hT_e, mask=e_ok[:, None] & p_ok[None, :])
        tl.store(hbase1 + pp[None, :] * N + 2 * j[:, None] + 1, hT_o, mask=o_ok[:, None] & p_ok[None, :])
        # last logical step: its key rotated by the final phase, its value, the phase.
        t_last = 0 if REVERSE else T - 1
        rr = tl.arange(0, R)
        lrow = ((b * T + t_last) * H + h) * R + rr
        vl = tl.load(v_ptr + lrow[:, None] * P + pp[None, :], mask=p_ok[None, :], other=0.0)
        tl.store(vp1_ptr + (b * H + h) * R * P + rr[:, None] * P + pp[None, :], vl, mask=p_ok[None, :])
        if pid_p == 0:
            ce = tl.cos(carry)[None, :]
            se = tl.sin(carry)[None, :]
            kl_e, kl_o = _load_pair(k_ptr, lrow[:, None] * N + 2 * j[None, :], e_ok[None, :], o_ok[None, :])
            kpb1 = kp1_ptr + (b * H + h) * R * N + rr[:, None] * N + 2 * j[None, :]
            kl_re, kl_ro = _rotate(kl_e, kl_o, ce, se)
            tl.store(kpb1, kl_re.to(kp1_ptr.dtype.element_ty), mask=e_ok[None, :])
            tl.store(kpb1 + 1, kl_ro.to(kp1_ptr.dtype.element_ty), mask=o_ok[None, :])
            tl.store(ph1_ptr + (b * H + h) * S + j, carry, mask=rot_ok)


_fwd_kernel = triton.jit(_fwd_kernel_impl, do_not_specialize=["T", "H"])
_fwd_kernel_tuned = triton.autotune(
    configs=forward_configs(),
    key=["R", "N", "P", "S", "ROWS", "REVERSE", "HAS_INIT", "STORE_FINAL", "DOT"],
)(triton.jit(_fwd_kernel_impl, do_not_specialize=["T", "H"]))


def launch_fwd(q, k, v, a, dt, lam, dph, D, y, init, final, *, R, reverse, rows, dot, config=None):
    """Launch the forward scan. All tensors contiguous; q/k/v viewed as [B, T, H, R, *].

    ``init``/``final`` are (ssm, k_prev, v_prev, phase) tuples or None. ``config`` forces one
    ``triton.Config`` (tests use it to run every autotune entry); None autotunes.
    """
    B, T, H = a.shape
    N = q.shape[-1]
    P = v.shape[-1]
    S = dph.shape[-1]
    half = triton.next_power_of_2(max((N + 1) // 2, 1))
    dummy = a
    h0, kp0, vp0, ph0 = init if init is not None else (dummy, dummy, dummy, dummy)
    h1, kp1, vp1, ph1 = final if final is not None else (dummy, dummy, dummy, dummy)
    args = (q, k, v, a, dt, lam, dph, D if D is not None else dummy, y,
            h0, kp0, vp0, ph0, h1, kp1, vp1, ph1, T, H)
    meta = dict(R=R, N=N, P=P, S=S, HALF=half, ROWS=rows, REVERSE=bool(reverse),
                HAS_INIT=init is not None, STORE_FINAL=final is not None,
                HAS_D=D is not None, DOT=dot)
    if config is not None:
        bp = config.kwargs["BLOCK_P"]
        grid = (B * H, triton.cdiv(P, min(bp, triton.next_power_of_2(P))))
        _fwd_kernel[grid](*args, **meta, BLOCK_P=min(bp, triton.next_power_of_2(P)),
                          num_warps=config.num_warps, num_stages=config.num_stages)
    else:
        grid = lambda m: (B * H, triton.cdiv(P, m["BLOCK_P"]))  # noqa: E731
        _fwd_kernel_tuned[grid](*args, **meta)
