"""Decode step kernel vs the float64 reference, prefill -> decode hand-off, and every autotune
config of every kernel launched once against the oracle."""

from __future__ import annotations

import pytest
import torch
import triton
from kernel_testlib import (CUDA, DIMS, Dims, batch_for, check, check_state, double, make_inputs,
                            make_state)

import diffmamba.kernels as K
from diffmamba.kernels import autograd as kernel_autograd
from diffmamba.kernels.autograd import _rows
from diffmamba.kernels.configs import SCAN_FWD_CONFIGS, STEP_CONFIGS
from diffmamba.kernels.scan_fwd import dot_mode, launch_fwd
from diffmamba.kernels.scan_step import launch_step
from diffmamba.ops import reference
from diffmamba.ops.state import Mamba3State


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(kernel_autograd, "POISON_OUTPUTS", True)


def step_inputs(B, dtype, R, seed, dims=DIMS):
    xs = make_inputs(B, 1, dtype, R=R, seed=seed, dims=dims)
    return [x[:, 0] if i < 7 else x for i, x in enumerate(xs)]


@pytest.mark.parametrize("B", [1, 128] if CUDA else [1, 3])
@pytest.mark.parametrize("R", [None, DIMS.R], ids=["siso", "mimo"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("fresh", [False, True], ids=["state", "fresh"])
def test_step(B, R, dtype, fresh):
    xs = step_inputs(B, dtype, R, seed=21)
    st = None if fresh else make_state(B, dtype, R=R, seed=22)
    y_ref, s_ref = reference.scan_step_ref(*double(xs), state=None if st is None else Mamba3State(*double(st)))
    ssm_in = None if st is None else st.ssm
    y, s = K.mamba3_step_triton(*xs, state=st)
    check("y", y, y_ref, dtype)
    check_state("state", s, s_ref, dtype)
    if ssm_in is not None:
        assert s.ssm.data_ptr() == ssm_in.data_ptr(), "ssm should be updated in place"


@pytest.mark.parametrize("N,P,R", [(33, 16, None), (33, 16, 2), (15, 8, None), (32, 16, 3)],
                         ids=["odd-N", "odd-N-mimo", "small-N-P", "rank-3"])
def test_step_awkward(N, P, R):
    """N = 33: the last key element has no rotary partner (loaded and stored on its own);
    N = 15, P = 8: zero-padded to 32, 16 (ssm still updated in place); R = 3: padded to 4."""
    dims = Dims(2, N, P, 7, 1, 16, 0)
    xs = step_inputs(3, torch.float32, R, seed=23, dims=dims)
    st = make_state(3, torch.float32, R=R, seed=24, dims=dims)
    y_ref, s_ref = reference.scan_step_ref(*double(xs), state=Mamba3State(*double(st)))
    ssm_in = st.ssm
    y, s = K.mamba3_step_triton(*xs, state=st)
    check("y", y, y_ref, torch.float32)
    check_state("state", s, s_ref, torch.float32)
    assert s.ssm.data_ptr() == ssm_in.data_ptr(), "ssm should be updated in place"


@pytest.mark.parametrize("R", [None, DIMS.R], ids=["siso", "mimo"])
def test_prefill_then_decode(R):
    """Triton scan over a prompt, then Triton steps == one reference scan over everything."""
    T, t0 = 24, 17
    B = 4 if CUDA else 2
    dtype = torch.float32
    xs = make_inputs(B, T, dtype, R=R, seed=23)
    y_ref, s_ref = reference.scan_recurrent_ref(*double(xs))
    y0, s = K.mamba3_scan_triton(*[x[:, :t0] for x in xs[:7]], xs[7], return_final_state=True,
                                 chunk_size=DIMS.chunk)
    ys = [y0]
    for t in range(t0, T):
        y_t, s = K.mamba3_step_triton(*[x[:, t] for x in xs[:7]], xs[7], s)
        ys.append(y_t.unsqueeze(1))
    check("y", torch.cat(ys, dim=1), y_ref, dtype)
    check_state("state", s, s_ref, dtype)


# The listed configs all cover P = 64 with one value block; the split-P path (several programs
# per (b, h), only the first storing k_prev / phase) is launched by forcing a value block of P / 2.
SPLIT_P = triton.Config({"BLOCK_P": DIMS.P // 2}, num_warps=4, num_stages=1)


@pytest.mark.parametrize("index", list(range(len(SCAN_FWD_CONFIGS))) + ["split_p"])
def test_every_forward_config(index):
    """Each autotune entry of the forward kernel, forced, against the oracle (MIMO + reverse +
    initial state: the branchiest variant), and the value dim split over two programs."""
    cfg = SPLIT_P if index == "split_p" else SCAN_FWD_CONFIGS[index]
    T, R = 37, DIMS.R
    B = batch_for(T) if CUDA else 1
    q, k, v, a, dt, lam, dph, D = make_inputs(B, T, torch.float32, R=R, seed=40 if index == "split_p" else 30 + index)
    st = make_state(B, torch.float32, R=R, seed=31)
    y_ref, s_ref = reference.scan_recurrent_ref(q.double(), k.double(), v.double(), a.double(),
                                                dt.double(), lam.double(), dph.double(), D.double(),
                                                reverse=True, initial_state=Mamba3State(*double(st)))
    y = torch.full_like(v, float("nan"))
    final = tuple(torch.full_like(t, float("nan")) for t in st)
    launch_fwd(q, k, v, a, dt, lam, dph, D, y, tuple(st), final, R=R, reverse=True,
               rows=_rows(DIMS.chunk, R, q.shape[-1]), dot=dot_mode(torch.float32, forward=True), config=cfg)
    check(f"config {index}: y", y, y_ref, torch.float32)
    check_state(f"config {index}: state", Mamba3State(*final), s_ref, torch.float32)


@pytest.mark.parametrize("index", range(len(STEP_CONFIGS)))
def test_every_step_config(index):
    cfg = STEP_CONFIGS[index]
    B, R = 2, DIMS.R
    q, k, v, a, dt, lam, dph, D = step_inputs(B, torch.float32, R, seed=40 + index)
    st = make_state(B, torch.float32, R=R, seed=41)
    y_ref, s_ref = reference.scan_step_ref(*double([q, k, v, a, dt, lam, dph, D]),
                                           state=Mamba3State(*double(st)))
    ssm = st.ssm.clone()
    y = torch.full_like(v, float("nan"))
    kp1, vp1, ph1 = (torch.full_like(t, float("nan")) for t in st[1:])
    launch_step(q, k, v, a, dt, lam, dph, D, y, ssm, st.k_prev, st.v_prev, st.phase, kp1, vp1, ph1,
                config=cfg)
    check(f"config {index}: y", y, y_ref, torch.float32)
    check_state(f"config {index}: state", Mamba3State(ssm, kp1, vp1, ph1), s_ref, torch.float32)
