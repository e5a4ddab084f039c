"""The every-token states form (short scans of decoding) against the per-token loop: outputs, the
state after each token, gradients, both directions; and when ``mamba3_scan`` picks it."""

import pytest
import torch

from diffmamba.ops import Mamba3State, mamba3_scan, mamba3_scan_states, scan
from diffmamba.ops import reference
from diffmamba.ops.reference import scan_recurrent_ref, scan_states_ref

TOL = 1e-12
INPUT_NAMES = ("q", "k", "v", "log_decay", "dt", "trap", "dphase", "D")


@pytest.mark.parametrize("T", [1, 5, 17])
@pytest.mark.parametrize("R", [None, 3])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("start", ["fresh", "resumed"])
def test_outputs_and_every_state_equal_the_loop(scan_tools, T, R, reverse, start):
    inputs = scan_tools.make_inputs(T=T, R=R, seed=40, with_D=T != 5)  # T = 5 runs without D
    state = scan_tools.random_state(R=R, seed=41) if start == "resumed" else None
    y, every = scan_states_ref(**inputs, reverse=reverse, initial_state=state)
    y_loop, final_loop = scan_recurrent_ref(**inputs, reverse=reverse, initial_state=state)
    label = f"T={T} R={R} reverse={reverse} {start}"
    scan_tools.assert_close(f"{label} y", y, y_loop, TOL)
    scan_tools.assert_states_close(label, reference.last_state(every), final_loop, TOL)
    assert every.ssm.shape[:2] == (inputs["q"].shape[0], T) and every.k_prev.dim() == final_loop.k_prev.dim() + 1
    for t in range(T - 1):  # entry t: the scan over the first t + 1 tokens in scan order
        part = scan_tools.time_slice(inputs, T - 1 - t, T) if reverse else scan_tools.time_slice(inputs, 0, t + 1)
        _, want = scan_recurrent_ref(**part, reverse=reverse, initial_state=state)
        scan_tools.assert_states_close(f"{label} t={t}", Mamba3State(*(x[:, t] for x in every)), want, TOL)


@pytest.mark.parametrize("R", [None, 2])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradients_equal_the_loop(scan_tools, R, reverse):
    inputs = scan_tools.make_inputs(B=2, T=6, R=R, seed=42)
    state = scan_tools.random_state(R=R, seed=43)
    weights = torch.randn(2, 6, 3, *(() if R is None else (R,)), 4, dtype=torch.float64)

    def grads(form):
        leaves = [t.detach().clone().requires_grad_(True) for t in [inputs[n] for n in INPUT_NAMES] + list(state)]
        named = dict(zip(INPUT_NAMES, leaves))
        y, final = form(**named, reverse=reverse, initial_state=Mamba3State(*leaves[len(INPUT_NAMES):]))
        final = reference.last_state(final) if form is scan_states_ref else final
        loss = (y * weights).sum() + final.ssm.square().sum() + final.k_prev.sum() + final.phase.sin().sum()
        return torch.autograd.grad(loss, leaves, allow_unused=True)

    for name, got, want in zip(INPUT_NAMES + Mamba3State._fields, grads(scan_states_ref), grads(scan_recurrent_ref)):
        if want is None:
            assert got is None or not got.abs().max() > 0, name
            continue
        scan_tools.assert_close(f"grad {name} R={R} reverse={reverse}", got, want, 1e-11)


def test_scan_states_entry_matches_the_chunked_scan_in_float32(scan_tools):
    inputs = scan_tools.make_inputs(T=9, dtype=torch.float32, seed=44)
    state = scan_tools.random_state(dtype=torch.float32, seed=45)
    y, every = mamba3_scan_states(**inputs, initial_state=state)
    y_chunked, final = mamba3_scan(**inputs, initial_state=state, return_final_state=True, impl="reference")
    assert y.dtype == torch.float32 and every.k_prev.dtype == torch.float32
    scan_tools.assert_close("fp32 y", y, y_chunked, 1e-5)
    scan_tools.assert_states_close("fp32 final", reference.last_state(every), final, 1e-5)
    with pytest.raises(ValueError, match="k must have shape"):
        mamba3_scan_states(**{**inputs, "k": inputs["k"][:, :3]})


def test_auto_takes_the_states_form_for_small_scans_without_autograd(scan_tools, monkeypatch):
    calls = []
    original = reference.scan_states_ref
    monkeypatch.setattr(reference, "scan_states_ref", lambda *a, **k: calls.append(a[0].shape[1]) or original(*a, **k))
    small = scan_tools.make_inputs(T=16, seed=46)  # B*T*H*P*N = 2 * 16 * 3 * 4 * 8 = 3072 states
    monkeypatch.setattr(scan, "STATES_FORM_MAX_ELEMENTS", 3072)
    y_auto, s_auto = mamba3_scan(**small, return_final_state=True)
    assert calls == [16]
    y_chunked, s_chunked = mamba3_scan(**small, return_final_state=True, impl="reference")
    scan_tools.assert_close("auto vs chunked y", y_auto, y_chunked, TOL)
    scan_tools.assert_states_close("auto vs chunked", s_auto, s_chunked, TOL)
    mamba3_scan(**scan_tools.make_inputs(T=17, seed=46))  # one token more: chunked
    trained = {**small, "v": small["v"].clone().requires_grad_(True)}
    mamba3_scan(**trained)  # autograd would save every state: chunked
    with torch.no_grad():
        mamba3_scan(**trained)
    monkeypatch.setenv(scan.IMPL_ENV_VAR, "reference")  # a pinned implementation is obeyed
    mamba3_scan(**small)
    assert calls == [16, 16]
