"""Triton chunked scan vs the float64 reference: outputs, final state, every gradient.

CPU: Triton interpreter, tiny heads (tests/kernels/kernel_testlib.py DIMS), a trimmed matrix.
CUDA: B*T >= 8k, H = 8, N = 128, P = 64, the full matrix.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import (CUDA, DIMS, Dims, batch_for, check, check_state, double, make_inputs,
                            make_state, upstream)

import diffmamba.kernels as K
from diffmamba.kernels import autograd as kernel_autograd
from diffmamba.kernels import scan_bwd
from diffmamba.kernels.core import core_backward
from diffmamba.ops import reference
from diffmamba.ops.state import Mamba3State

DTYPES = [torch.float32, torch.bfloat16]
T_ALL = [1, 15, 16, 17, 64, 65, 200]
# The interpreter runs ~1 ms per program and numpy-speed math: on CPU the forward matrix keeps
# every chunk-boundary case (chunk = 16 rows there) and the gradient matrix a subset.
T_FWD = T_ALL if CUDA else [1, 15, 16, 17, 65, 200]
T_BWD = T_ALL if CUDA else [1, 16, 17, 65]


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every kernel output buffer starts as NaN, so an unwritten element fails the checks."""
    monkeypatch.setattr(kernel_autograd, "POISON_OUTPUTS", True)


def oracle(xs, reverse, state):
    """float64 reference: the per-token loop on CPU, the chunked form (equal to 1e-15) on GPU."""
    fn = reference.scan_chunked_ref if CUDA else reference.scan_recurrent_ref
    st = None if state is None else Mamba3State(*double(state))
    return fn(*double(xs), reverse=reverse, initial_state=st)


def run_forward(T, dtype, reverse, with_init, R=None, seed=0):
    B = batch_for(T)
    xs = make_inputs(B, T, dtype, R=R, seed=seed)
    st = make_state(B, dtype, R=R) if with_init else None
    y, s = K.mamba3_scan_triton(*xs, reverse=reverse, initial_state=st, return_final_state=True,
                                chunk_size=DIMS.chunk)
    y_ref, s_ref = oracle(xs, reverse, st)
    check("y", y, y_ref, dtype)
    assert y.dtype == xs[2].dtype and s.ssm.dtype == torch.float32
    check_state("state", s, s_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", T_FWD)
@pytest.mark.parametrize("with_init", [False, True], ids=["fresh", "init"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_forward_siso(T, dtype, reverse, with_init):
    run_forward(T, dtype, reverse, with_init)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", T_ALL if CUDA else [1, 17, 65])
@pytest.mark.parametrize("with_init", [False, True], ids=["fresh", "init"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_forward_mimo(T, dtype, reverse, with_init):
    run_forward(T, dtype, reverse, with_init, R=DIMS.R)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", T_ALL if CUDA else [1, 16, 17, 65])
@pytest.mark.parametrize("with_init", [False, True], ids=["fresh", "init"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("R", [None, DIMS.R], ids=["siso", "mimo"])
def test_forward_split(T, dtype, reverse, with_init, R, monkeypatch):
    """The chunk-parallel forward (DIFFMAMBA_SCAN_FWD=split) against the same oracle."""
    monkeypatch.setenv("DIFFMAMBA_SCAN_FWD", "split")
    run_forward(T, dtype, reverse, with_init, R=R)


def grads_kernel(xs, st, reverse, seeds, chunk=DIMS.chunk):
    leaves = [x.detach().clone().requires_grad_() for x in xs]
    sl = [t.detach().clone().requires_grad_() for t in st] if st is not None else None
    y, s = K.mamba3_scan_triton(*leaves, reverse=reverse,
                                initial_state=None if sl is None else Mamba3State(*sl),
                                return_final_state=True, chunk_size=chunk)
    torch.autograd.backward([y, *s], seeds)
    return [t.grad for t in leaves + (sl or [])], (y, s)


def grads_oracle(xs, st, reverse, seeds):
    leaves = [x.detach().double().requires_grad_() for x in xs]
    sl = [t.detach().double().requires_grad_() for t in st] if st is not None else None
    fn = reference.scan_chunked_ref if CUDA else reference.scan_recurrent_ref
    y, s = fn(*leaves, reverse=reverse, initial_state=None if sl is None else Mamba3State(*sl))
    torch.autograd.backward([y, *s], [g.double() for g in seeds])
    return [t.grad for t in leaves + (sl or [])]


NAMES = ["dq", "dk", "dv", "dlog_decay", "ddt", "dtrap", "ddphase", "dD",
         "dssm0", "dk_prev0", "dv_prev0", "dphase0"]


def run_backward(T, dtype, reverse, with_init, R=None, dims=DIMS, B=None, check_outputs=False):
    B = B or batch_for(T)
    xs = make_inputs(B, T, dtype, R=R, seed=3, dims=dims)
    st = make_state(B, dtype, R=R, seed=4, dims=dims) if with_init else None
    # shapes of (y, ssm, k_prev, v_prev, phase) without running anything
    rk = () if R is None else (R,)
    shapes = [(xs[2].shape, xs[2].dtype), ((B, dims.H, dims.P, dims.N), torch.float32),
              ((B, dims.H, *rk, dims.N), dtype), ((B, dims.H, *rk, dims.P), dtype),
              ((B, dims.H, dims.S), torch.float32)]
    seeds = upstream([torch.empty(s, dtype=d, device=xs[0].device) for s, d in shapes])
    got, (y, s) = grads_kernel(xs, st, reverse, seeds, chunk=dims.chunk)
    ref = grads_oracle(xs, st, reverse, seeds)
    if check_outputs:
        y_ref, s_ref = oracle(xs, reverse, st)
        check("y", y, y_ref, dtype)
        check_state("state", s, s_ref, dtype)
    for name, g, r in zip(NAMES, got, ref):
        check(name, g, r, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", T_BWD)
@pytest.mark.parametrize("with_init", [False, True], ids=["fresh", "init"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_backward_siso(T, dtype, reverse, with_init):
    run_backward(T, dtype, reverse, with_init)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", T_ALL if CUDA else [1, 17, 65])
@pytest.mark.parametrize("with_init", [False, True], ids=["fresh", "init"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_backward_mimo(T, dtype, reverse, with_init, monkeypatch):
    """MIMO runs the Triton backward (rank rows in the core, R x R diagonal block in the pre-pass)."""
    calls = []
    monkeypatch.setattr(scan_bwd, "core_backward",
                        lambda *a, **kw: calls.append(1) or core_backward(*a, **kw))
    run_backward(T, dtype, reverse, with_init, R=DIMS.R)
    assert calls, "the MIMO backward did not run the Triton core"


AWKWARD = {
    # name: (Dims, R, T); fields H, N, P, S, R (unused), chunk (steps), tokens (unused)
    "no-rotation": (Dims(2, 40, 20, 0, 1, 16, 0), None, 23),   # S = 0, N/P not powers of two
    "all-rotated": (Dims(2, 40, 20, 20, 1, 16, 0), None, 23),  # S = N / 2
    "odd-P": (Dims(1, 40, 33, 7, 1, 32, 0), None, 50),         # N = 40 pads to 64 lanes, P odd
    "odd-N": (Dims(2, 33, 16, 7, 1, 16, 0), None, 20),         # last key element has no rotary partner
    "odd-N-mimo": (Dims(2, 33, 16, 4, 1, 8, 0), 2, 20),
    "small-N-P": (Dims(2, 15, 8, 7, 1, 16, 0), None, 20),      # zero-padded to N = 32, P = 16
    "rank-3": (Dims(2, 16, 8, 3, 1, 8, 0), 3, 20),             # padded to 4 zero-filled rank rows
    "rank-8": (Dims(2, 8, 4, 2, 1, 2, 0), 8, 19),             # 16-row chunks of two steps
    "rank-2-big-chunk": (Dims(2, 32, 16, 5, 1, 64, 0), 2, 33),  # 128 rows fwd, clamped to 64 bwd
}


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("case", sorted(AWKWARD))
@pytest.mark.parametrize("forward", ["fused", "split"])
def test_awkward_shapes(case, reverse, forward, monkeypatch):
    """Every output and gradient at shapes the main matrix does not reach (same float64 oracle)."""
    monkeypatch.setenv("DIFFMAMBA_SCAN_FWD", forward)
    dims, R, T = AWKWARD[case]
    run_backward(T, torch.float32, reverse, True, R=R, dims=dims, B=2, check_outputs=True)


@pytest.mark.parametrize("R", [None, DIMS.R], ids=["siso", "mimo"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_split_and_resume(reverse, R):
    """scan(x[:t]) then scan(x[t:], state) == scan(x) (reverse: suffix first), with gradients
    flowing through the hand-off state, for split points on and off chunk boundaries."""
    T = 53
    B = batch_for(T)
    dtype = torch.float32
    xs = make_inputs(B, T, dtype, R=R, seed=11)
    st0 = make_state(B, dtype, R=R, seed=12)
    y_full, s_full = oracle(xs, reverse, st0)
    for t in (1, DIMS.chunk, 37):
        leaves = [x.detach().clone().requires_grad_() for x in xs]
        D = leaves[7]
        cut = lambda x: (x[:, t:], x[:, :t]) if reverse else (x[:, :t], x[:, t:])  # noqa: E731
        parts = [cut(x) for x in leaves[:7]]
        y1, s1 = K.mamba3_scan_triton(*[p[0] for p in parts], D, reverse=reverse, initial_state=st0,
                                      return_final_state=True, chunk_size=DIMS.chunk)
        y2, s2 = K.mamba3_scan_triton(*[p[1] for p in parts], D, reverse=reverse, initial_state=s1,
                                      return_final_state=True, chunk_size=DIMS.chunk)
        y = torch.cat((y2, y1) if reverse else (y1, y2), dim=1)
        check(f"split {t}: y", y, y_full, dtype)
        check_state(f"split {t}: state", s2, s_full, dtype)
        # gradient through the hand-off equals the one-piece gradient
        seeds = upstream([y, *s2], seed=t)
        torch.autograd.backward([y, *s2], seeds)
        ref = grads_oracle(xs, st0, reverse, seeds)
        # only the 8 inputs: st0's grads are covered by test_backward_*
        for name, g, r in zip(NAMES[:8], [x.grad for x in leaves], ref[:8]):
            check(f"split {t}: {name}", g, r, dtype)


def test_no_skip_and_no_final_state():
    """D=None and return_final_state=False paths."""
    T = 33
    B = batch_for(T)
    xs = make_inputs(B, T, torch.float32, seed=5)
    xs[7] = None
    y, s = K.mamba3_scan_triton(*xs, chunk_size=DIMS.chunk)
    assert s is None
    y_ref, _ = oracle(xs, False, None)
    check("y (D=None)", y, y_ref, torch.float32)


@pytest.mark.parametrize("chunk", [16, 32, 128])
def test_chunk_sizes(chunk):
    """The chunk length changes rounding only."""
    T = 70
    B = batch_for(T)
    xs = make_inputs(B, T, torch.float32, seed=6)
    st = make_state(B, torch.float32, seed=8)
    y, s = K.mamba3_scan_triton(*xs, reverse=True, initial_state=st, return_final_state=True,
                                chunk_size=chunk)
    y_ref, s_ref = oracle(xs, True, st)
    check(f"y (chunk {chunk})", y, y_ref, torch.float32)
    check_state(f"state (chunk {chunk})", s, s_ref, torch.float32)


def test_float64_goes_to_reference():
    T = 9
    xs = make_inputs(2, T, torch.float64, seed=9)
    xs = [x.double() for x in xs]
    y, s = K.mamba3_scan_triton(*xs, return_final_state=True)
    y_ref, s_ref = reference.scan_recurrent_ref(*xs)
    assert y.dtype == torch.float64 and s.ssm.dtype == torch.float64
    assert (y - y_ref).abs().max().item() < 1e-10
