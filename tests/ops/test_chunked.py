"""Chunked form == per-token loop: outputs and the whole final state, on awkward lengths."""

import pytest
import torch

from diffmamba.ops import Mamba3State
from diffmamba.ops.reference import scan_chunked_ref, scan_recurrent_ref

CHUNK = 8
LENGTHS = [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5]
TOL = 1e-12


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "initial_state"])
def test_chunked_matches_recurrent_siso(scan_tools, T, reverse, resume):
    inputs = scan_tools.make_inputs(T=T, seed=T)
    state = scan_tools.random_state() if resume else None
    y_loop, s_loop = scan_recurrent_ref(**inputs, reverse=reverse, initial_state=state)
    y_chunk, s_chunk = scan_chunked_ref(**inputs, reverse=reverse, initial_state=state, chunk_size=CHUNK)
    label = f"T={T} reverse={reverse} resume={resume}"
    scan_tools.assert_close(f"{label} y", y_chunk, y_loop, TOL)
    scan_tools.assert_states_close(label, s_chunk, s_loop, TOL)


@pytest.mark.parametrize("T", [1, CHUNK + 1, 3 * CHUNK + 5])
@pytest.mark.parametrize("R", [2, 4])
@pytest.mark.parametrize("reverse", [False, True])
def test_chunked_matches_recurrent_mimo(scan_tools, T, R, reverse):
    inputs = scan_tools.make_inputs(T=T, R=R, seed=10 * T + R)
    state = scan_tools.random_state(R=R)
    y_loop, s_loop = scan_recurrent_ref(**inputs, reverse=reverse, initial_state=state)
    y_chunk, s_chunk = scan_chunked_ref(**inputs, reverse=reverse, initial_state=state, chunk_size=CHUNK)
    label = f"MIMO R={R} T={T} reverse={reverse}"
    scan_tools.assert_close(f"{label} y", y_chunk, y_loop, TOL)
    scan_tools.assert_states_close(label, s_chunk, s_loop, TOL)


@pytest.mark.parametrize("chunk_size", [1, 3, 64, 1000])
def test_chunk_size_does_not_change_the_result(scan_tools, chunk_size):
    """Degenerate chunkings: one token per chunk, odd sizes, the default, one chunk for all."""
    inputs = scan_tools.make_inputs(T=70, H=2, seed=11)
    y_loop, s_loop = scan_recurrent_ref(**inputs)
    y_chunk, s_chunk = scan_chunked_ref(**inputs, chunk_size=chunk_size)
    scan_tools.assert_close(f"chunk={chunk_size} y", y_chunk, y_loop, TOL)
    scan_tools.assert_states_close(f"chunk={chunk_size}", s_chunk, s_loop, TOL)


def test_strong_decay_long_sequence_stays_finite_and_exact(scan_tools):
    """|a| up to ~40 per step: exp(l_i) * exp(-l_j) factorised over a long cumsum would give
    0 * inf = NaN; chunk-local cumsums with clamped differences must stay exact."""
    inputs = scan_tools.make_inputs(T=300, H=2, P=3, N=4, S=2, seed=12)
    inputs["log_decay"] = inputs["log_decay"] * 100
    y_loop, s_loop = scan_recurrent_ref(**inputs)
    y_chunk, s_chunk = scan_chunked_ref(**inputs, chunk_size=64)
    scan_tools.assert_close("strong decay y", y_chunk, y_loop, TOL)
    scan_tools.assert_states_close("strong decay", s_chunk, s_loop, TOL)


@pytest.mark.parametrize("N,S", [(7, 3), (6, 0), (8, 4)])
def test_odd_state_size_no_angles_and_full_rotation(scan_tools, N, S):
    """N odd takes the real-arithmetic rotation path; S = 0 and S = N / 2 are the extremes."""
    inputs = scan_tools.make_inputs(T=19, N=N, S=S, R=2, seed=13)
    state = scan_tools.random_state(N=N, S=S, R=2)
    y_loop, s_loop = scan_recurrent_ref(**inputs, initial_state=state)
    y_chunk, s_chunk = scan_chunked_ref(**inputs, initial_state=state, chunk_size=CHUNK)
    scan_tools.assert_close(f"N={N} S={S} y", y_chunk, y_loop, TOL)
    scan_tools.assert_states_close(f"N={N} S={S}", s_chunk, s_loop, TOL)


@pytest.mark.parametrize("T", [1, CHUNK - 1, CHUNK, 3 * CHUNK + 5])
@pytest.mark.parametrize("R", [None, 2])
@pytest.mark.parametrize("reverse", [False, True])
def test_without_the_final_state_the_outputs_and_gradients_are_the_same(scan_tools, T, R, reverse):
    """``final_state=False`` skips the last chunk's state update, which no output reads: y and every
    gradient equal the full call's bit for bit (same ops on the same values), and no state comes back."""
    def run(final_state):
        inputs = {name: t.clone().requires_grad_() for name, t in
                  scan_tools.make_inputs(T=T, R=R, seed=T + (R or 0)).items()}
        state = Mamba3State(*(s.clone().requires_grad_() for s in scan_tools.random_state(R=R)))
        y, final = scan_chunked_ref(**inputs, reverse=reverse, initial_state=state, chunk_size=CHUNK,
                                    final_state=final_state)
        y.square().sum().backward()
        return y, final, [t.grad for t in (*inputs.values(), *state)]

    y_full, final_full, grads_full = run(True)
    y, final, grads = run(False)
    assert final is None and final_full is not None
    assert torch.equal(y, y_full)
    for got, want in zip(grads, grads_full, strict=True):
        assert (got is None and want is None) or torch.equal(got, want)
