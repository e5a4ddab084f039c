"""Fused decode step of one Mamba-3 direction: the layer's input transform, the recurrence step and
the output gate in one Triton kernel (opt-in: ``DIFFMAMBA_STEP=fused``).

Reference: ``Mamba3Direction.step`` (diffmamba/modules/mamba3.py), i.e. ``scan_inputs`` (softplus
dt, heavy-tailed decay floored at a_floor, sigmoid trapezoid weight, pi * tanh angles, RMS-normed B
and C plus per-head biases, MIMO value weights), then ``reference.scan_step_ref``, then ``gate``
(SiLU gate; MIMO: the gated ranks summed), with the same roundings to the activation dtype.

Why: unfused, one decode token runs a few dozen small kernels per layer between the two projections
(the prologue's elementwise ops, the step, the gate). Replayed from a CUDA graph at batch 1 they
still cost ~155 µs of device time per layer of the 130M model on an H200 (docs/benchmarks.md),
while the data they move is kilobytes. Here one launch reads the projection row, the parameters
and the state, and writes the gated output and the new state.

One program per (batch, head, block of BLOCK_P value rows), as ``scan_step.py``; each recomputes its
head's prologue (2 R N + S + 3 values), which costs nothing next to its [BLOCK_P, N] state tile.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .configs import STEP_CONFIGS, active
from .scan_fwd import _load_pair, _mod_2pi, _rotate
from .scan_step import _advance_state


@triton.jit
def _log1p(e):
    # log(1 + e), e >= 0, accurate for tiny e (Goldberg): log(u) * e / (u - 1) with u = 1 + e rounded.
    # Plain log(1 + e) would cost dt = softplus(-10) ~ 4.5e-5 a 3e-3 relative error in fp32.
    u = 1.0 + e
    return tl.where(u == 1.0, e, tl.log(u) * e / (u - 1.0))


@triton.jit
def _softplus(x):
    # torch.nn.functional.softplus (threshold 20), as max(x, 0) + log1p(exp(-|x|)): no overflow
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + _log1p(tl.exp(-tl.abs(x))))


@triton.jit
def _tanh(x):
    # exp-based (no libdevice under the interpreter); exp(2x) = inf gives 1, 0 gives -1
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _rounded(x, act: tl.constexpr):
    """x rounded to the activation dtype, to nearest even, kept in fp32. For bf16 by bit arithmetic:
    a plain .to(tl.bfloat16) rounds to nearest on a GPU but truncates in the Triton interpreter,
    which doubled the CPU tests' error; rounded first, the stores' own casts are then exact."""
    if act == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(act).to(tl.float32)


@triton.jit
def _normed_pairs(row_ptr, w_ptr, bias_ptr, rowk, j, mk, mko, e_ok, o_ok, eps,
                  N: tl.constexpr, act: tl.constexpr):
    """RMSNorm over N of each rank row of a [R, N] block of the projection, times the norm weight
    (rounded to the activation dtype, as RMSNorm returns), plus the head's bias (rounded again)."""
    e, o = _load_pair(row_ptr, rowk, mk, mko)
    inv = 1.0 / tl.sqrt(tl.sum(e * e + o * o, axis=1) / N + eps)  # [RP]
    we, wo = _load_pair(w_ptr, 2 * j, e_ok, o_ok)
    be, bo = _load_pair(bias_ptr, rowk, mk, mko)
    e = _rounded(e * inv[:, None] * we[None, :], act)
    o = _rounded(o * inv[:, None] * wo[None, :], act)
    return _rounded(e + be, act), _rounded(o + bo, act)


def _fused_step_impl(
    proj_ptr, x_ptr, z_ptr, dtb_ptr, bw_ptr, cw_ptr, bb_ptr, cb_ptr, D_ptr, mx_ptr, mz_ptr, mo_ptr,
    h_ptr, kp_ptr, vp_ptr, ph_ptr, out_ptr, kp1_ptr, vp1_ptr, ph1_ptr,
    proj_stride, xz_stride, H, a_floor, eps,
    R: tl.constexpr, RP: tl.constexpr, N: tl.constexpr, P: tl.constexpr, S: tl.constexpr,
    HALF: tl.constexpr, BLOCK_P: tl.constexpr, HAS_D: tl.constexpr, MIMO: tl.constexpr,
):
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_p = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    act = x_ptr.dtype.element_ty
    j = tl.arange(0, HALF)
    e_ok = 2 * j < N  # odd N: the last even element has no partner (never rotated, S <= N // 2)
    o_ok = 2 * j + 1 < N
    rot_ok = j < S
    rr = tl.arange(0, RP)
    r_ok = rr < R
    pp = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = pp < P

    # ---- prologue (scan_inputs): the projection row is [B (R N), C (R N), dd_dt (H), dd_A (H), trap (H), angles (S)]
    row = proj_ptr + b * proj_stride
    scalars = row + 2 * R * N
    dt = _softplus(tl.load(scalars + h).to(tl.float32) + tl.load(dtb_ptr + h).to(tl.float32))
    u = tl.load(scalars + H + h).to(tl.float32)
    tail = 1.0 + tl.maximum(u, 0.0) + (1.0 / (1.0 - tl.minimum(u, 0.0)) - 1.0)  # heavy_tail
    alpha = tl.exp(-tl.maximum(tail, a_floor) * dt)
    lam = _sigmoid(tl.load(scalars + 2 * H + h).to(tl.float32))
    beta = (1.0 - lam) * dt * alpha
    gamma = lam * dt
    theta = 3.141592653589793 * _tanh(tl.load(scalars + 3 * H + j, mask=rot_ok, other=0.0).to(tl.float32))
    phi = _mod_2pi(tl.load(ph_ptr + pid_bh * S + j, mask=rot_ok, other=0.0) + dt * theta)
    cs = tl.cos(phi)[None, :]
    sn = tl.sin(phi)[None, :]

    rowk = rr[:, None] * N + 2 * j[None, :]  # [RP, HALF] in a [R, N] block
    mk = r_ok[:, None] & e_ok[None, :]
    mko = r_ok[:, None] & o_ok[None, :]
    ke, ko = _normed_pairs(row, bw_ptr, bb_ptr + h * R * N, rowk, j, mk, mko, e_ok, o_ok, eps, N, act)
    qe, qo = _normed_pairs(row + R * N, cw_ptr, cb_ptr + h * R * N, rowk, j, mk, mko, e_ok, o_ok, eps, N, act)
    qre, qro = _rotate(qe, qo, cs, sn)
    kre, kro = _rotate(ke, ko, cs, sn)
    kpe, kpo = _load_pair(kp_ptr + pid_bh * R * N, rowk, mk, mko)

    rowv = rr[:, None] * P + pp[None, :]  # [RP, BLOCK_P] in a [R, P] block
    mv = r_ok[:, None] & p_ok[None, :]
    xv = tl.load(x_ptr + b * xz_stride + h * P + pp, mask=p_ok, other=0.0).to(tl.float32)
    if MIMO:
        vv = _rounded(xv[None, :] * tl.load(mx_ptr + h * R * P + rowv, mask=mv, other=0.0), act)
    else:
        vv = tl.where(mv, xv[None, :], 0.0)
    vp = tl.load(vp_ptr + pid_bh * R * P + rowv, mask=mv, other=0.0).to(tl.float32)

    # ---- the step (scan_step.py), the state updated in place
    y = _advance_state(h_ptr + pid_bh * P * N, pp, j, p_ok, e_ok, o_ok, alpha, beta, gamma, vp, vv,
                       kpe, kpo, kre, kro, qre, qro, N)  # [RP, BLOCK_P]
    if HAS_D:
        y += tl.load(D_ptr + h).to(tl.float32) * vv
    y = _rounded(y, act)  # the step's output, in the activation dtype

    # ---- epilogue (gate): y silu(z); MIMO sum_r y_r silu(z mimo_z_r) mimo_o_r
    z = tl.load(z_ptr + b * xz_stride + h * P + pp, mask=p_ok, other=0.0).to(tl.float32)
    if MIMO:
        zr = z[None, :] * tl.load(mz_ptr + h * R * P + rowv, mask=mv, other=0.0)
        gated = tl.sum(y * zr * _sigmoid(zr) * tl.load(mo_ptr + h * R * P + rowv, mask=mv, other=0.0), axis=0)
    else:
        gated = tl.sum(y, axis=0) * z * _sigmoid(z)
    tl.store(out_ptr + b * H * P + h * P + pp, _rounded(gated, act).to(out_ptr.dtype.element_ty), mask=p_ok)
    tl.store(vp1_ptr + pid_bh * R * P + rowv, vv.to(vp1_ptr.dtype.element_ty), mask=mv)
    if pid_p == 0:
        kdt = kp1_ptr.dtype.element_ty
        tl.store(kp1_ptr + pid_bh * R * N + rowk, _rounded(kre, kdt).to(kdt), mask=mk)
        tl.store(kp1_ptr + pid_bh * R * N + rowk + 1, _rounded(kro, kdt).to(kdt), mask=mko)
        tl.store(ph1_ptr + pid_bh * S + j, phi, mask=rot_ok)


_fused_step_tuned = triton.autotune(
    configs=active(STEP_CONFIGS), key=["R", "N", "P", "S"],
    restore_value=["h_ptr"],  # the state is updated in place: every config timed from the same state
)(triton.jit(_fused_step_impl, do_not_specialize=["H", "proj_stride", "xz_stride"]))


def launch_fused_step(proj, x, z, params: dict, ssm, kp, vp, ph, out, kp1, vp1, ph1, *, R, N, P, S, H):
    """proj [B, >= 2RN + 3H + S], x, z [B, H*P] (row strides given; the unit strides are the last
    axis'); ``params``: dt_bias, b_norm, c_norm, b_bias, c_bias, D (or None), mimo_x / mimo_z /
    mimo_o (or None), a_floor, eps. State in rank form: ssm [B, H, P, N] fp32 (in place), kp
    [B, H, R, N], vp [B, H, R, P], ph [B, H, S] fp32; outputs out [B, H*P], kp1, vp1, ph1."""
    B = x.shape[0]
    half = triton.next_power_of_2(max((N + 1) // 2, 1))
    D = params["D"]
    mimo = params["mimo_x"] is not None
    dummy = params["dt_bias"]
    args = (proj, x, z, params["dt_bias"], params["b_norm"], params["c_norm"], params["b_bias"], params["c_bias"],
            D if D is not None else dummy, *((params[k] for k in ("mimo_x", "mimo_z", "mimo_o")) if mimo
                                             else (dummy, dummy, dummy)),
            ssm, kp, vp, ph, out, kp1, vp1, ph1, proj.stride(0), x.stride(0), H, float(params["a_floor"]),
            float(params["eps"]))
    meta = dict(R=R, RP=triton.next_power_of_2(R), N=N, P=P, S=S, HALF=half, HAS_D=D is not None, MIMO=mimo)
    grid = lambda m: (B * H, triton.cdiv(P, m["BLOCK_P"]))  # noqa: E731
    _fused_step_tuned[grid](*args, **meta)  # the step kernel's configs, each launched by its own tests
