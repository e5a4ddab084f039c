"""Public entry: validation messages, dispatch (impl / env / Triton fallback), state contract."""

import pytest
import torch

from diffmamba.ops import Mamba3State, mamba3_scan, mamba3_scan_ref, mamba3_step
from diffmamba.ops import reference, scan

B, T, H, P, N, S = 2, 17, 4, 5, 8, 3


@pytest.fixture
def inputs(scan_tools):
    return scan_tools.make_inputs(B=B, T=T, H=H, P=P, N=N, S=S, dtype=torch.float32, seed=50)


BAD_SHAPES = [
    ("dt", (B, T), "dt must have shape [B, T, H] = [2, 17, 4], got [2, 17]"),
    ("trap", (B, T, H + 1), "trap must have shape [B, T, H] = [2, 17, 4], got [2, 17, 5]"),
    ("log_decay", (B, T + 1, H), "log_decay must have shape [B, T, H] = [2, 17, 4], got [2, 18, 4]"),
    ("k", (B, T, H, N + 2), "k must have shape [B, T, H, N] = [2, 17, 4, 8], got [2, 17, 4, 10]"),
    ("v", (B, T, H - 1, P), "v must have shape [B, T, H, P] = [2, 17, 4, P], got [2, 17, 3, 5]"),
    ("dphase", (B, T, H, N), "dphase must have shape [B, T, H, S] with S <= N // 2 = 4, got [2, 17, 4, 8]"),
    ("dphase", (B, T, S), "dphase must have shape [B, T, H, S] = [2, 17, 4, S], got [2, 17, 3]"),
    ("D", (H, 1), "D must have shape [H] = [4], got [4, 1]"),
    ("q", (B, T, N), "q must have shape [B, T, H, N] (SISO) or [B, T, H, R, N] (MIMO), got [2, 17, 8]"),
]


@pytest.mark.parametrize("name,shape,message", BAD_SHAPES, ids=[f"{c[0]}{list(c[1])}" for c in BAD_SHAPES])
def test_bad_shapes_name_the_expected_shape(inputs, name, shape, message):
    inputs[name] = torch.zeros(shape)
    with pytest.raises(ValueError) as error:
        mamba3_scan(**inputs)
    print(error.value)
    assert str(error.value) == message


def test_mimo_shapes_are_checked_against_q(scan_tools):
    mimo = scan_tools.make_inputs(B=B, T=T, H=H, P=P, N=N, S=S, R=2, dtype=torch.float32)
    mimo["v"] = torch.zeros(B, T, H, 3, P)
    with pytest.raises(ValueError, match=r"v must have shape \[B, T, H, R, P\] = \[2, 17, 4, 2, P\]"):
        mamba3_scan(**mimo)


def test_bad_initial_state_and_dtypes(scan_tools, inputs):
    state = Mamba3State.zeros(B, H, P, N, S + 1)
    with pytest.raises(ValueError, match=r"state.phase must have shape \[B, H, S\] = \[2, 4, 3\], got \[2, 4, 4\]"):
        mamba3_scan(**inputs, initial_state=state)
    with pytest.raises(ValueError, match="k must have q's dtype"):
        mamba3_scan(**dict(inputs, k=inputs["k"].double()))
    with pytest.raises(ValueError, match=r"dt must have dtype in \(float32, float64\), got bfloat16"):
        mamba3_scan(**dict(inputs, dt=inputs["dt"].bfloat16()))
    with pytest.raises(ValueError, match="q must have at least one time step"):
        mamba3_scan(**scan_tools.time_slice(inputs, 0, 0))
    with pytest.raises(ValueError, match="one device"):
        mamba3_scan(**dict(inputs, D=torch.zeros(H, device="meta")))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        mamba3_scan(**inputs, chunk_size=0)


def test_step_validation(inputs):
    names = ("q", "k", "v", "log_decay", "dt", "trap", "dphase")
    token = [inputs[n][:, 0] for n in names]
    token[4] = token[4][:, :1]
    with pytest.raises(ValueError, match=r"dt must have shape \[B, H\] = \[2, 4\], got \[2, 1\]"):
        mamba3_step(*token, inputs["D"], None)
    token[4] = inputs["dt"][:, 0]
    y_t, state = mamba3_step(*token, inputs["D"], None)
    assert y_t.shape == (B, H, P) and state.ssm.shape == (B, H, P, N)


def test_outputs_follow_the_contract(inputs):
    y, state = mamba3_scan(**inputs)
    assert y.shape == inputs["v"].shape and y.dtype == inputs["v"].dtype and state is None
    low = dict(inputs, q=inputs["q"].bfloat16(), k=inputs["k"].bfloat16(), v=inputs["v"].bfloat16())
    y, state = mamba3_scan(**low, return_final_state=True)
    assert y.dtype == torch.bfloat16
    assert state.ssm.shape == (B, H, P, N) and state.ssm.dtype == torch.float32
    assert state.k_prev.shape == (B, H, N) and state.k_prev.dtype == torch.bfloat16
    assert state.v_prev.shape == (B, H, P) and state.v_prev.dtype == torch.bfloat16
    assert state.phase.shape == (B, H, S) and state.phase.dtype == torch.float32
    assert float(state.phase.min()) >= 0 and float(state.phase.max()) < 2 * torch.pi


def test_zero_state_is_a_fresh_start(inputs):
    zeros = Mamba3State.zeros(B, H, P, N, S, dtype=torch.float32)
    assert zeros.k_prev.shape == (B, H, N) and zeros.ssm.dtype == torch.float32
    mimo_zeros = Mamba3State.zeros(B, H, P, N, S, R=3, dtype=torch.float64)
    assert mimo_zeros.k_prev.shape == (B, H, 3, N) and mimo_zeros.v_prev.shape == (B, H, 3, P)
    assert mimo_zeros.ssm.dtype == torch.float64 and mimo_zeros.phase.dtype == torch.float64
    y_none, s_none = mamba3_scan(**inputs, return_final_state=True)
    y_zero, s_zero = mamba3_scan(**inputs, initial_state=zeros, return_final_state=True)
    assert torch.equal(y_none, y_zero) and torch.equal(s_none.ssm, s_zero.ssm)


def test_recurrent_impl_and_env_override(inputs, monkeypatch):
    calls = []
    original = reference.scan_recurrent_ref
    monkeypatch.setattr(reference, "scan_recurrent_ref", lambda *a, **k: calls.append(1) or original(*a, **k))
    y_chunked, _ = mamba3_scan_ref(**inputs)
    assert not calls
    y_loop, _ = mamba3_scan_ref(**inputs, impl="recurrent")
    assert calls == [1]
    monkeypatch.setenv(scan.IMPL_ENV_VAR, "recurrent")
    mamba3_scan(**inputs)
    assert calls == [1, 1]
    err = (y_chunked - y_loop).abs().max().item()
    print(f"chunked vs recurrent fp32: {err:.3e}")
    assert err < 1e-4
    monkeypatch.setenv(scan.IMPL_ENV_VAR, "cuda-magic")
    with pytest.raises(ValueError, match="DIFFMAMBA_SCAN_IMPL"):
        mamba3_scan(**inputs)
    with pytest.raises(ValueError, match="impl must be None or one of"):
        mamba3_scan(**inputs, impl="fast")


def test_triton_dispatch_and_fallback(inputs, monkeypatch):
    seen = {}

    def fake_triton_scan(*args, **kwargs):
        seen.update(kwargs, num_args=len(args))
        return "triton-y", None

    monkeypatch.setattr(scan, "_triton_entry", lambda name: (fake_triton_scan, None))
    assert mamba3_scan(**inputs, impl="triton", reverse=True, chunk_size=16)[0] == "triton-y"
    assert seen["num_args"] == 7 and seen["reverse"] is True and seen["chunk_size"] == 16
    assert scan._resolve_impl(None, on_cuda=True, triton_name="x") == ("triton", fake_triton_scan)
    assert scan._resolve_impl(None, on_cuda=False, triton_name="x") == ("reference", None)

    monkeypatch.setattr(scan, "_triton_entry", lambda name: (None, "no kernels here"))
    with pytest.raises(ImportError, match="no kernels here"):
        mamba3_scan(**inputs, impl="triton")
    with pytest.warns(UserWarning, match="using the PyTorch reference"):
        assert scan._resolve_impl(None, on_cuda=True, triton_name="x") == ("reference", None)
