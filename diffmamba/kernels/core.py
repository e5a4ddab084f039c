"""Triton kernels of the core decayed linear recurrence behind the backward and the split forward.

Reference: the chunked form of ``diffmamba.ops.reference.scan_chunked_ref`` with the rotary,
trapezoid and diagonal terms factored out (``prepass.py`` does that pre-pass); the equations are
written out in ``diffmamba/kernels/README.md`` ("Backward").

The core, per (batch, head), with per-token log decay a_t, rotated queries Qr_{t,r}, scaled
rotated keys K_{t,r} = kr_{t,r} scale_t (both [N]) and values v_{t,r} [P], r < R (SISO: R = 1):

    G_t     = exp(a_t) G_{t-1} + sum_r K_{t,r} v_{t,r}^T   (G stored transposed, [N, P]; G_0 = entry)
    y_{t,r} = exp(a_t) G_{t-1}^T Qr_{t,r}                  (the diagonal R x R block is added outside)

A chunk holds C rows ordered (t, r), C / R time steps. Only a step's first rank row carries a_t
(the others read 0), so the row-wise cumsum l gives every rank row of step t the step's l_t and
the rank rows need no special case except the causal mask, which compares steps, not rows.

In chunks of C steps with chunk-local inclusive cumsum l_i and entering state G_c this is the
forward's ``y_i = sum_{j<i} (Qr_i . K_j) exp(l_i - l_j) v_j + exp(l_i) G_c^T Qr_i``. Kernels:

  ``_walk_states``  forward walk: one program per (b, h) walks the chunks forward and stores
                    every chunk's entering state in fp32 (the forward kernel keeps its states in
                    registers, so the backward recomputes them: one light pass).
                    Backward walk: the same kernel carries dG, the adjoint of the state leaving
                    the chunk, from the last chunk to the first, exactly as the forward carries
                    G; stores it per chunk, and the adjoint of the entry state G_0.
  ``_chunk_grads``  one program per (b*h, chunk), fully parallel: dQr, dK, dv (core part) and
                    d a from the saved G_c and dG of its chunk.
  ``_chunk_outputs`` the split forward's outputs: one program per (b*h, chunk, value block),
                    y from the chunk's entering G_c plus the same-step block from the pre-pass.

``reverse=True`` mirrors the time index (logical step s reads physical step T-1-s) as in the
forward kernel, so no flipped copies are made.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .scan_fwd import _dot, dot_mode


@triton.jit
def _chunk_rows(b, h, c, T, H, C: tl.constexpr, R: tl.constexpr, REVERSE: tl.constexpr):
    """Chunk c's C logical rows (step row // R, rank row % R): row offsets ((b*T + t)*H + h)*R + r
    into q/k/v/dy, step offsets (b*T + t)*H + h into a, validity, and the first-rank flags."""
    s_row = c * C + tl.arange(0, C)
    step = s_row // R
    ok = step < T
    if REVERSE:
        t_phys = T - 1 - step
    else:
        t_phys = step
    st = (b * T + t_phys) * H + h
    rank = s_row % R
    return st * R + rank, st, ok, rank == 0


@triton.jit
def _chunk_decay(a_ptr, st, ok, first):
    """Chunk-local inclusive cumsum l of the log decay (per row) and its total l_last."""
    a = tl.load(a_ptr + st, mask=ok & first, other=0.0)
    return tl.cumsum(a, axis=0), tl.sum(a, axis=0)


@triton.jit
def _walk_states(x_ptr, y_ptr, a_ptr, init_ptr, stack_ptr, end_ptr, T, H, NC,
                 N: tl.constexpr, P: tl.constexpr, NB: tl.constexpr, PB: tl.constexpr,
                 C: tl.constexpr, R: tl.constexpr, REVERSE: tl.constexpr, BACKWARD: tl.constexpr,
                 HAS_INIT: tl.constexpr, HAS_END: tl.constexpr, DOT: tl.constexpr):
    """One program per (b, h) carries an [N, P] matrix over the chunks and stores it as it enters
    each chunk: the states G (BACKWARD = False: first chunk to last, X = K', Y = v, row weight
    exp(l_last - l_j)) or the state adjoints dG (BACKWARD = True: last chunk to first, X = Qr,
    Y = dy, row weight exp(l_i)); per chunk  M <- exp(l_last) M + (X * weight)^T Y.
    init / end are [P, N] (the state's layout): G_0 in and the final G (= final ssm) out, or the
    final ssm's gradient in and dG_0 out."""
    pid = tl.program_id(0)
    b = (pid // H).to(tl.int64)
    h = (pid % H).to(tl.int64)
    n = tl.arange(0, NB)
    p = tl.arange(0, PB)
    n_ok = n < N
    p_ok = p < P
    st_mask = n_ok[:, None] & p_ok[None, :]
    state_layout = pid.to(tl.int64) * P * N + p[None, :] * N + n[:, None]  # [P, N] read as [N, P]
    if HAS_INIT:
        m = tl.load(init_ptr + state_layout, mask=st_mask, other=0.0)
    else:
        m = tl.zeros([NB, PB], dtype=tl.float32)
    stack = stack_ptr + pid.to(tl.int64) * NC * N * P + n[:, None] * P + p[None, :]
    for i in range(0, NC):
        c = NC - 1 - i if BACKWARD else i
        tl.store(stack + c * N * P, m, mask=st_mask)
        row, st, ok, first = _chunk_rows(b, h, c, T, H, C, R, REVERSE)
        l, l_last = _chunk_decay(a_ptr, st, ok, first)
        xx = tl.load(x_ptr + row[:, None] * N + n[None, :], mask=ok[:, None] & n_ok[None, :], other=0.0)
        yy = tl.load(y_ptr + row[:, None] * P + p[None, :], mask=ok[:, None] & p_ok[None, :],
                     other=0.0).to(tl.float32)
        # exponents <= 0 (docs/mamba3.md §6.2). Backward: dG_c = exp(l_last) dG + sum_i exp(l_i) Qr_i dy_i^T,
        # the inter-chunk term of every y_i.
        w = tl.exp(tl.minimum(l, 0.0)) if BACKWARD else tl.exp(tl.minimum(l_last - l, 0.0))
        m = tl.exp(tl.minimum(l_last, 0.0)) * m + _dot(tl.trans(xx * w[:, None]), yy, DOT)
    if HAS_END:
        tl.store(end_ptr + state_layout, m, mask=st_mask)


@triton.jit
def _chunk_tiles(q_ptr, k_ptr, a_ptr, c, pid, T, H, N: tl.constexpr, NB: tl.constexpr,
                 C: tl.constexpr, R: tl.constexpr, REVERSE: tl.constexpr):
    """What every chunk-parallel program of (chunk c, b*h = pid) starts from: its rows, their
    decays, the [C, N] Qr and K' tiles, each row's local step t and the strictly causal decay
    M_ij = exp(l_i - l_j) for t(j) < t(i) (clamped before exp, docs/mamba3.md §6.2; the same-step R x R block is
    the diagonal term, kept apart)."""
    b = (pid // H).to(tl.int64)
    h = (pid % H).to(tl.int64)
    n = tl.arange(0, NB)
    n_ok = n < N
    row, st, ok, first = _chunk_rows(b, h, c, T, H, C, R, REVERSE)
    l, l_last = _chunk_decay(a_ptr, st, ok, first)
    qk_mask = ok[:, None] & n_ok[None, :]
    qq = tl.load(q_ptr + row[:, None] * N + n[None, :], mask=qk_mask, other=0.0)
    kk = tl.load(k_ptr + row[:, None] * N + n[None, :], mask=qk_mask, other=0.0)
    t = tl.arange(0, C) // R
    m = tl.where(t[None, :] < t[:, None], tl.exp(tl.minimum(l[:, None] - l[None, :], 0.0)), 0.0)
    return row, st, ok, first, l, l_last, n, n_ok, qk_mask, qq, kk, t, m


@triton.jit
def _chunk_grads(q_ptr, k_ptr, v_ptr, dy_ptr, a_ptr, hs_ptr, dhs_ptr,
                 dq_ptr, dk_ptr, dv_ptr, da_ptr, T, H, NC,
                 N: tl.constexpr, P: tl.constexpr, NB: tl.constexpr, BP: tl.constexpr,
                 C: tl.constexpr, R: tl.constexpr, REVERSE: tl.constexpr, DOT: tl.constexpr):
    pid = tl.program_id(0)  # b*h on axis 0: CUDA caps axes 1 and 2 at 65535 programs
    c = tl.program_id(1)
    row, st, ok, first, l, l_last, n, n_ok, qk_mask, qq, kk, t, m = _chunk_tiles(
        q_ptr, k_ptr, a_ptr, c, pid, T, H, N, NB, C, R, REVERSE)
    am = _dot(qq, tl.trans(kk), DOT) * m  # decayed scores (Qr_i . K_j) M_ij
    w = tl.exp(tl.minimum(l_last - l, 0.0))  # decay of step j to the chunk's end
    e = tl.exp(tl.minimum(l, 0.0))  # decay of the entering state to step i

    hs = hs_ptr + (pid.to(tl.int64) * NC + c) * N * P
    dhs = dhs_ptr + (pid.to(tl.int64) * NC + c) * N * P
    dp = tl.zeros([C, C], dtype=tl.float32)  # dy_i . v_j
    dq_inter = tl.zeros([C, NB], dtype=tl.float32)  # G_c^T-side: dy_i G_c^T
    dk_state = tl.zeros([C, NB], dtype=tl.float32)  # dG-side: v_j dG^T
    gdg = tl.zeros([NB], dtype=tl.float32)  # <G_c, dG> partial sums
    # The value dim is walked in blocks so only [N, BP] slices of G_c and dG are live at once;
    # dQr and dK need the full sum over P, dv is complete per block.
    for p0 in range(0, P, BP):
        p = p0 + tl.arange(0, BP)
        p_ok = p < P
        vp_mask = ok[:, None] & p_ok[None, :]
        vv = tl.load(v_ptr + row[:, None] * P + p[None, :], mask=vp_mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + row[:, None] * P + p[None, :], mask=vp_mask, other=0.0).to(tl.float32)
        st_mask = n_ok[:, None] & p_ok[None, :]
        g = tl.load(hs + n[:, None] * P + p[None, :], mask=st_mask, other=0.0)
        dg = tl.load(dhs + n[:, None] * P + p[None, :], mask=st_mask, other=0.0)
        dp += _dot(dy, tl.trans(vv), DOT)
        dq_inter += _dot(dy, tl.trans(g), DOT)
        dk_state += _dot(vv, tl.trans(dg), DOT)
        gdg += tl.sum(g * dg, axis=1)
        # dv_j = sum_{i>j} (Qr_i . K_j) M_ij dy_i + w_j dG^T K_j
        dv = _dot(tl.trans(am), dy, DOT) + w[:, None] * _dot(kk, dg, DOT)
        tl.store(dv_ptr + row[:, None] * P + p[None, :], dv, mask=vp_mask)
    wm = dp * m
    dk_intra = _dot(tl.trans(wm), qq, DOT)
    dq = _dot(wm, kk, DOT) + e[:, None] * dq_inter
    tl.store(dq_ptr + row[:, None] * N + n[None, :], dq, mask=qk_mask)
    tl.store(dk_ptr + row[:, None] * N + n[None, :], dk_intra + w[:, None] * dk_state, mask=qk_mask)
    # d a_s. Outputs: every exponent of y_i holds +l_i (query side) and -l_j (key side), so
    # d l_i = Qr_i . dQr_i - K_i . dK_intra_i, and d a_s = sum_{i>=s} d l_i (l_i = sum_{s<=i} a_s).
    # Leaving state G_next = exp(l_last) G_c + sum_j w_j K_j v_j^T: a_s scales G_c and the inputs
    # j < s, so it gets exp(l_last) <dG, G_c> + sum_{j<s} w_j K_j . (dG^T v_j) directly; written
    # this way (rather than as +<dG, G_next> on the last row minus each key's share) nothing
    # cancels, and a gradient that is exactly 0 (T = 1, fresh state) comes out exactly 0.
    dl = tl.sum(qq * dq, axis=1) - tl.sum(kk * dk_intra, axis=1)
    u = w * tl.sum(kk * dk_state, axis=1)
    da = tl.sum(dl, axis=0) - tl.cumsum(dl, axis=0) + dl + tl.cumsum(u, axis=0) - u
    da += tl.exp(tl.minimum(l_last, 0.0)) * tl.sum(gdg, axis=0)
    # a_t lives on the step's first rank row (the others' a is the constant 0)
    tl.store(da_ptr + st, da, mask=ok & first)


@triton.jit
def _chunk_outputs(q_ptr, k_ptr, v_ptr, a_ptr, c_ptr, D_ptr, hs_ptr, y_ptr, T, H, NC,
                   N: tl.constexpr, P: tl.constexpr, NB: tl.constexpr, BP: tl.constexpr,
                   C: tl.constexpr, R: tl.constexpr, REVERSE: tl.constexpr, HAS_D: tl.constexpr,
                   DOT: tl.constexpr):
    """y of one chunk and value block from its entering state G_c (the split forward):
    y_i = sum_{t(j) < t(i)} (Qr_i . K_j) exp(l_i - l_j) v_j + sum_{t(j) = t(i)} c_ij v_j
          + exp(l_i) G_c^T Qr_i + D v_i,   c = the same-step block gamma qk (from the pre-pass).
    The D skip is added in fp32 after the dots, as the fused forward does."""
    pid = tl.program_id(0)
    c = tl.program_id(1)
    row, st, ok, first, l, l_last, n, n_ok, qk_mask, qq, kk, t, m = _chunk_tiles(
        q_ptr, k_ptr, a_ptr, c, pid, T, H, N, NB, C, R, REVERSE)
    # bf16 I/O: bf16 tensor-core operands with fp32 accumulation, the fused forward's policy
    w = _dot(qq, tl.trans(kk), DOT) * m
    rank = tl.arange(0, C) % R
    same = (t[None, :] == t[:, None]) & ok[:, None] & ok[None, :]
    w += tl.load(c_ptr + st[:, None] * R * R + rank[:, None] * R + rank[None, :], mask=same, other=0.0)
    p = tl.program_id(2) * BP + tl.arange(0, BP)
    p_ok = p < P
    vv = tl.load(v_ptr + row[:, None] * P + p[None, :], mask=ok[:, None] & p_ok[None, :], other=0.0)
    g = tl.load(hs_ptr + (pid.to(tl.int64) * NC + c) * N * P + n[:, None] * P + p[None, :],
                mask=n_ok[:, None] & p_ok[None, :], other=0.0)
    y = _dot(w, vv.to(tl.float32), DOT)
    y += tl.exp(tl.minimum(l, 0.0))[:, None] * _dot(qq, g, DOT)
    if HAS_D:
        y += tl.load(D_ptr + pid % H).to(tl.float32) * vv.to(tl.float32)
    tl.store(y_ptr + row[:, None] * P + p[None, :], y.to(y_ptr.dtype.element_ty),
             mask=ok[:, None] & p_ok[None, :])


def chunk_rows(chunk_size: int, R: int) -> int:
    """Rows of the chunk of these kernels for ``chunk_size`` time steps of rank R: a power of two in
    [max(16, R), 64] (64 keeps the [rows, N] tiles in registers; the chunk length changes rounding
    only). ``DIFFMAMBA_BWD_CHUNK`` (rows) overrides it for tuning."""
    target = int(os.environ.get("DIFFMAMBA_BWD_CHUNK", chunk_size * R))
    rows = 16
    while rows < min(target, 64):
        rows *= 2
    return max(rows, R)


def _geometry(qr, v, a, chunk):
    B, T, H = a.shape
    R = qr.shape[3] if qr.dim() == 5 else 1
    assert chunk % R == 0 and chunk >= 16, (chunk, R)
    N, P = qr.shape[-1], v.shape[-1]
    return B, T, H, R, N, P, triton.cdiv(T * R, chunk), triton.next_power_of_2(N), triton.next_power_of_2(P)


def walk_states(x, y, a, init, *, backward: bool, reverse: bool, chunk: int, want_end: bool, dot: int):
    """``_walk_states`` on [B, T, H, (R,) *] inputs: the [N, P] matrix entering every chunk,
    [B*H, NC, N, P] fp32, and the one leaving the walk ([B, H, P, N], or None)."""
    B, T, H, R, N, P, NC, NB, PB = _geometry(x, y, a, chunk)
    stack = torch.empty(B * H, NC, N, P, device=x.device, dtype=torch.float32)
    end = torch.empty(B, H, P, N, device=x.device, dtype=torch.float32) if want_end else None
    _walk_states[(B * H,)](x, y, a, init if init is not None else a, stack, end if want_end else a,
                           T, H, NC, N=N, P=P, NB=NB, PB=PB, C=chunk, R=R, REVERSE=bool(reverse),
                           BACKWARD=backward, HAS_INIT=init is not None, HAS_END=want_end, DOT=dot,
                           num_warps=4 if NB * PB <= 4096 else 8)
    return stack, end


def chunk_outputs(qr, kp, v, a, c, D, hs, y, *, reverse: bool, chunk: int):
    """Fill y [B, T, H, R, P] from the pre-pass outputs (qr, K' fp32; the same-step block c
    [B, T, H, R, R] fp32), the skip D [H] or None and the entering states ``hs`` of
    ``walk_states``, one program per (b*h, chunk, value block of <= 64)."""
    B, T, H, R, N, P, NC, NB, PB = _geometry(qr, v, a, chunk)
    BP = min(PB, 64)
    _chunk_outputs[(B * H, NC, triton.cdiv(P, BP))](
        qr, kp, v, a, c, D if D is not None else a, hs, y, T, H, NC, N=N, P=P, NB=NB, BP=BP, C=chunk,
        R=R, REVERSE=bool(reverse), HAS_D=D is not None, DOT=dot_mode(v.dtype, forward=True),
        num_warps=8 if NB >= 128 else 4)
    return y


def core_backward(qr, kp, v, a, g0, dy, dg1, *, reverse: bool, chunk: int):
    """Gradients of the core recurrence (module docstring) by the three kernels.

    qr, kp: [B, T, H, R, N] float32 (or SISO [B, T, H, N]); v, dy: [B, T, H, R, P] (or
    [B, T, H, P]; any float dtype); a: [B, T, H] float32; g0: [B, H, P, N] float32 entry state or
    None (zero); dg1: [B, H, P, N] float32 upstream gradient of the final state or None. All
    contiguous. ``chunk`` (rows) is a power of two >= max(16, R).
    Returns dQr, dK, dv (float32, core part only, shaped as the inputs), da [B, T, H] and dG_0.
    """
    B, T, H, R, N, P, NC, NB, PB = _geometry(qr, v, a, chunk)
    dot = dot_mode(v.dtype, forward=False)
    walk = dict(reverse=reverse, chunk=chunk, dot=dot)
    hs, _ = walk_states(kp, v, a, g0, backward=False, want_end=False, **walk)
    dhs, dg0 = walk_states(qr, dy, a, dg1, backward=True, want_end=True, **walk)
    dq = torch.empty_like(qr)
    dk = torch.empty_like(kp)
    dv = torch.empty(v.shape, device=qr.device, dtype=torch.float32)
    da = torch.empty(B, T, H, device=qr.device, dtype=torch.float32)
    # Value blocks of 32: at N = 128 the [C, N] q, k, dQ and dK tiles already hold ~130 registers
    # a thread; with BP = 64 the G / dG slices pushed ptxas to 1 KB of spills per thread on sm_90,
    # with 32 (and 2 stages) to 256 bytes (`diffmamba bench resources`).
    _chunk_grads[(B * H, NC)](qr, kp, v, dy, a, hs, dhs, dq, dk, dv, da, T, H, NC,
                              N=N, P=P, NB=NB, BP=min(PB, 32), C=chunk, R=R, REVERSE=bool(reverse),
                              DOT=dot, num_warps=8 if NB >= 128 else 4, num_stages=2)
    return dq, dk, dv, da, dg0
