"""Triton decode step of the Mamba-3 recurrence (one token, SISO and MIMO).

Reference: ``diffmamba.ops.reference.scan_step_ref``.

    Phi <- Phi + dphase (mod 2pi);  qr, kr = R(Phi) q, R(Phi) k
    h   <- exp(a) h + (1 - lam) dt exp(a) sum_r k_prev^(r) v_prev^(r)T + lam dt sum_r kr^(r) v^(r)T
    y^(r) = h qr^(r) + D v^(r);  k_prev <- kr;  v_prev <- v

One program per (batch, head, block of BLOCK_P state rows): the fp32 state [P, N] is the only
sizeable traffic (read once, written once, in place), so the step is bound by 2*P*N*4 bytes per
(batch, head). k_prev/v_prev/phase are written to fresh buffers: every value block reads the old
k_prev and phase, so updating those in place would race between programs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .configs import STEP_CONFIGS, active
from .scan_fwd import _load_pair, _mod_2pi, _rotate


@triton.jit
def _advance_state(h_ptr, pp, j, p_ok, e_ok, o_ok, alpha, beta, gamma, vp, vv, kpe, kpo, kre, kro, qre, qro,
                   N: tl.constexpr):
    """h <- alpha h + beta sum_r vp_r kp_r^T + gamma sum_r v_r kr_r^T on this program's state rows
    pp (even / odd columns, [BLOCK_P, HALF], in place at h_ptr, one head's [P, N] state), and
    returns y = h qr per rank ([R, BLOCK_P], before the D skip). The rank-R outer products are
    broadcast sums over r ([R, BLOCK_P, HALF]); R is tiny."""
    hoff = pp[:, None] * N + 2 * j[None, :]
    mh = p_ok[:, None] & e_ok[None, :]
    mho = p_ok[:, None] & o_ok[None, :]
    he, ho = _load_pair(h_ptr, hoff, mh, mho)
    he = alpha * he + tl.sum(beta * vp[:, :, None] * kpe[:, None, :] + gamma * vv[:, :, None] * kre[:, None, :], axis=0)
    ho = alpha * ho + tl.sum(beta * vp[:, :, None] * kpo[:, None, :] + gamma * vv[:, :, None] * kro[:, None, :], axis=0)
    tl.store(h_ptr + hoff, he, mask=mh)
    tl.store(h_ptr + hoff + 1, ho, mask=mho)
    return tl.sum(he[None, :, :] * qre[:, None, :] + ho[None, :, :] * qro[:, None, :], axis=2)


def _step_kernel_impl(
    q_ptr, k_ptr, v_ptr, a_ptr, dt_ptr, lam_ptr, dph_ptr, D_ptr, y_ptr,
    h_ptr, kp_ptr, vp_ptr, ph_ptr, kp1_ptr, vp1_ptr, ph1_ptr,
    H,
    R: tl.constexpr, N: tl.constexpr, P: tl.constexpr, S: tl.constexpr, HALF: tl.constexpr,
    BLOCK_P: tl.constexpr, HAS_D: tl.constexpr,
):
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_p = tl.program_id(1)
    h = pid_bh % H
    j = tl.arange(0, HALF)
    e_ok = 2 * j < N  # odd N: the last even element has no partner (never rotated, S <= N // 2)
    o_ok = 2 * j + 1 < N
    rot_ok = j < S
    rr = tl.arange(0, R)
    pp = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = pp < P

    phi = tl.load(ph_ptr + pid_bh * S + j, mask=rot_ok, other=0.0).to(tl.float32)
    phi = _mod_2pi(phi + tl.load(dph_ptr + pid_bh * S + j, mask=rot_ok, other=0.0).to(tl.float32))
    cs = tl.cos(phi)[None, :]
    sn = tl.sin(phi)[None, :]

    a = tl.load(a_ptr + pid_bh).to(tl.float32)
    dt = tl.load(dt_ptr + pid_bh).to(tl.float32)
    lam = tl.load(lam_ptr + pid_bh).to(tl.float32)
    alpha = tl.exp(a)
    beta = (1.0 - lam) * dt * alpha
    gamma = lam * dt

    rowk = (pid_bh * R + rr)[:, None] * N + 2 * j[None, :]  # [R, HALF]
    mk = e_ok[None, :]
    mko = o_ok[None, :]
    qe, qo = _load_pair(q_ptr, rowk, mk, mko)
    ke, ko = _load_pair(k_ptr, rowk, mk, mko)
    qre, qro = _rotate(qe, qo, cs, sn)
    kre, kro = _rotate(ke, ko, cs, sn)
    kpe, kpo = _load_pair(kp_ptr, rowk, mk, mko)

    rowv = (pid_bh * R + rr)[:, None] * P + pp[None, :]  # [R, BLOCK_P]
    mv = p_ok[None, :]
    vv = tl.load(v_ptr + rowv, mask=mv, other=0.0).to(tl.float32)
    vp = tl.load(vp_ptr + rowv, mask=mv, other=0.0).to(tl.float32)

    y = _advance_state(h_ptr + pid_bh * P * N, pp, j, p_ok, e_ok, o_ok, alpha, beta, gamma, vp, vv,
                       kpe, kpo, kre, kro, qre, qro, N)
    if HAS_D:
        y += tl.load(D_ptr + h).to(tl.float32) * vv
    tl.store(y_ptr + rowv, y.to(y_ptr.dtype.element_ty), mask=mv)
    tl.store(vp1_ptr + rowv, vv.to(vp1_ptr.dtype.element_ty), mask=mv)
    if pid_p == 0:
        tl.store(kp1_ptr + rowk, kre.to(kp1_ptr.dtype.element_ty), mask=mk)
        tl.store(kp1_ptr + rowk + 1, kro.to(kp1_ptr.dtype.element_ty), mask=mko)
        tl.store(ph1_ptr + pid_bh * S + j, phi, mask=rot_ok)


_step_kernel = triton.jit(_step_kernel_impl, do_not_specialize=["H"])
_step_kernel_tuned = triton.autotune(
    configs=active(STEP_CONFIGS), key=["R", "N", "P", "S"],
    # the state is updated in place: every benchmarked config must start from the same state.
    restore_value=["h_ptr"],
)(triton.jit(_step_kernel_impl, do_not_specialize=["H"]))


def launch_step(q, k, v, a, dt, lam, dph, D, y, ssm, kp, vp, ph, kp1, vp1, ph1, *, config=None):
    """Launch the step. q, k: [B, H, R, N]; v, y: [B, H, R, P]; ssm [B, H, P, N] fp32 (in place)."""
    B, H, R, N = q.shape
    P = v.shape[-1]
    S = dph.shape[-1]
    half = triton.next_power_of_2(max((N + 1) // 2, 1))
    dummy = a
    args = (q, k, v, a, dt, lam, dph, D if D is not None else dummy, y,
            ssm, kp, vp, ph, kp1, vp1, ph1, H)
    meta = dict(R=R, N=N, P=P, S=S, HALF=half, HAS_D=D is not None)
    if config is not None:
        bp = min(config.kwargs["BLOCK_P"], triton.next_power_of_2(P))
        _step_kernel[(B * H, triton.cdiv(P, bp))](*args, **meta, BLOCK_P=bp,
                                                  num_warps=config.num_warps, num_stages=config.num_stages)
    else:
        grid = lambda m: (B * H, triton.cdiv(P, m["BLOCK_P"]))  # noqa: E731
        _step_kernel_tuned[grid](*args, **meta)
