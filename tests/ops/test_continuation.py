"""State hand-off: split-and-resume == one pass (both directions), step loop == scan."""

import pytest
import torch

from diffmamba.ops.reference import last_state, scan_chunked_ref, scan_recurrent_ref, scan_states_ref, scan_step_ref

T = 29
CHUNK = 8
TOL = 1e-12


def _final_state_only(states_form):
    def run(*args, **kwargs):
        y, every = states_form(*args, **kwargs)
        return y, last_state(every)
    return run


def _concat(first, second):
    return torch.cat((first, second), dim=1)


@pytest.mark.parametrize("split", [1, 5, CHUNK, 17, T - 1])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("scan", [scan_chunked_ref, scan_recurrent_ref, scan_states_ref],
                         ids=["chunked", "recurrent", "states"])
def test_split_and_resume_equals_one_pass(scan_tools, split, reverse, scan):
    if scan is scan_states_ref:  # its state comes per token; the last entry continues the scan
        scan = _final_state_only(scan_states_ref)
    inputs = scan_tools.make_inputs(T=T, seed=20)
    start_state = scan_tools.random_state()  # the whole thing may itself be a continuation
    kwargs = {"chunk_size": CHUNK} if scan is scan_chunked_ref else {}
    y_full, s_full = scan(**inputs, reverse=reverse, initial_state=start_state, **kwargs)
    head = scan_tools.time_slice(inputs, 0, split)
    tail = scan_tools.time_slice(inputs, split, T)
    # Forward consumes the head first; reverse consumes the tail first (contracts.md §1).
    first, second = (tail, head) if reverse else (head, tail)
    y_first, s_mid = scan(**first, reverse=reverse, initial_state=start_state, **kwargs)
    y_second, s_end = scan(**second, reverse=reverse, initial_state=s_mid, **kwargs)
    y_joined = _concat(y_second, y_first) if reverse else _concat(y_first, y_second)
    label = f"{scan.__name__} split={split} reverse={reverse}"
    scan_tools.assert_close(f"{label} y", y_joined, y_full, TOL)
    scan_tools.assert_states_close(label, s_end, s_full, TOL)


@pytest.mark.parametrize("R", [None, 2])
def test_three_segments_mixing_chunked_and_recurrent(scan_tools, R):
    inputs = scan_tools.make_inputs(T=T, R=R, seed=21)
    y_full, s_full = scan_chunked_ref(**inputs, chunk_size=CHUNK)
    y1, s = scan_chunked_ref(**scan_tools.time_slice(inputs, 0, 10), chunk_size=CHUNK)
    y2, s = scan_recurrent_ref(**scan_tools.time_slice(inputs, 10, 11), initial_state=s)
    y3, s = scan_chunked_ref(**scan_tools.time_slice(inputs, 11, T), initial_state=s, chunk_size=CHUNK)
    scan_tools.assert_close(f"3 segments R={R} y", torch.cat((y1, y2, y3), 1), y_full, TOL)
    scan_tools.assert_states_close(f"3 segments R={R}", s, s_full, TOL)


@pytest.mark.parametrize("R", [None, 3])
@pytest.mark.parametrize("prefill", [0, 12], ids=["fresh", "after_prefill"])
def test_step_loop_equals_scan(scan_tools, R, prefill):
    inputs = scan_tools.make_inputs(T=T, R=R, seed=22)
    y_full, s_full = scan_chunked_ref(**inputs, chunk_size=CHUNK)
    state = None
    outputs = []
    if prefill:
        y_prefill, state = scan_chunked_ref(**scan_tools.time_slice(inputs, 0, prefill), chunk_size=CHUNK)
        outputs.append(y_prefill)
    for t in range(prefill, T):
        token = {n: (x[:, t] if n in scan_tools.TIME_INPUTS else x) for n, x in inputs.items()}
        y_t, state = scan_step_ref(**token, state=state)
        outputs.append(y_t.unsqueeze(1))
    label = f"step loop R={R} prefill={prefill}"
    scan_tools.assert_close(f"{label} y", torch.cat(outputs, 1), y_full, TOL)
    scan_tools.assert_states_close(label, state, s_full, TOL)


def test_reverse_is_flip_run_flip_of_the_forward_loop(scan_tools):
    inputs = scan_tools.make_inputs(T=T, R=2, seed=23)
    state = scan_tools.random_state(R=2)
    flipped = {n: (x.flip(1) if n in scan_tools.TIME_INPUTS else x) for n, x in inputs.items()}
    y_flip, s_flip = scan_recurrent_ref(**flipped, initial_state=state)
    y_rev, s_rev = scan_chunked_ref(**inputs, reverse=True, initial_state=state, chunk_size=CHUNK)
    scan_tools.assert_close("reverse y", y_rev, y_flip.flip(1), TOL)
    scan_tools.assert_states_close("reverse", s_rev, s_flip, TOL)
    # The reverse state describes token 0, the last one a reverse scan consumes.
    assert torch.equal(s_rev.v_prev, inputs["v"][:, 0])
