"""``mamba3_scan_pair`` (both directions of a bidirectional layer in one call) against two separate
scans of the float64 per-token loop: outputs, the forward final state, every gradient, each
PyTorch form, awkward lengths, and the checks on its arguments."""

import pytest
import torch

from diffmamba.ops import Mamba3State, mamba3_scan_pair
from diffmamba.ops.reference import scan_recurrent_ref

TOL = 1e-12
SCAN_INPUTS = ("q", "k", "v", "log_decay", "dt", "trap", "dphase")


def directions(scan_tools, T, R, seed, with_D=True):
    """Two directions' inputs over the same tokens: (forward dict, backward dict, D_f, D_b)."""
    forward = scan_tools.make_inputs(T=T, R=R, seed=seed, with_D=with_D)
    backward = scan_tools.make_inputs(T=T, R=R, seed=seed + 1, with_D=with_D)
    D_f, D_b = forward.pop("D"), backward.pop("D")
    return forward, backward, D_f, D_b


def loop_pair(forward, backward, D_f, D_b, state):
    y_f, final = scan_recurrent_ref(**forward, D=D_f, initial_state=state)
    y_b, _ = scan_recurrent_ref(**backward, D=D_b, reverse=True)
    return y_f, y_b, final


@pytest.mark.parametrize("impl", ["reference", "states", "recurrent", None])
@pytest.mark.parametrize("T,chunk", [(1, 4), (7, 4), (13, 64)])
@pytest.mark.parametrize("R", [None, 2])
@pytest.mark.parametrize("start", ["fresh", "resumed"])
def test_equals_two_separate_scans(scan_tools, impl, T, chunk, R, start):
    forward, backward, D_f, D_b = directions(scan_tools, T, R, seed=60 + T)
    state = scan_tools.random_state(R=R, seed=62) if start == "resumed" else None
    y_f, y_b, final = mamba3_scan_pair(forward, backward, D_f, D_b, initial_state=state, return_final_state=True,
                                       chunk_size=chunk, impl=impl)
    want_f, want_b, want_final = loop_pair(forward, backward, D_f, D_b, state)
    label = f"impl={impl} T={T} chunk={chunk} R={R} {start}"
    scan_tools.assert_close(f"{label} y forward", y_f, want_f, TOL)
    scan_tools.assert_close(f"{label} y backward", y_b, want_b, TOL)
    scan_tools.assert_states_close(label, final, want_final, TOL)
    assert y_f.shape == y_b.shape == forward["v"].shape and final.ssm.shape[0] == forward["q"].shape[0]


def test_without_D_or_final_state(scan_tools):
    forward, backward, _, _ = directions(scan_tools, 6, None, seed=70, with_D=False)
    y_f, y_b, final = mamba3_scan_pair(forward, backward, None, None)
    want_f, want_b, _ = loop_pair(forward, backward, None, None, None)
    assert final is None
    scan_tools.assert_close("y forward", y_f, want_f, TOL)
    scan_tools.assert_close("y backward", y_b, want_b, TOL)


@pytest.mark.parametrize("R", [None, 2])
def test_gradients_equal_two_separate_scans(scan_tools, R):
    forward, backward, D_f, D_b = directions(scan_tools, 9, R, seed=80)
    state = scan_tools.random_state(R=R, seed=82)
    weights = [torch.randn(forward["v"].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
               for s in (1, 2)]

    def grads(pair):
        leaves = ([forward[n] for n in SCAN_INPUTS] + [backward[n] for n in SCAN_INPUTS] + [D_f, D_b]
                  + list(state))
        leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
        f, b = dict(zip(SCAN_INPUTS, leaves[:7])), dict(zip(SCAN_INPUTS, leaves[7:14]))
        y_f, y_b, final = pair(f, b, leaves[14], leaves[15], Mamba3State(*leaves[16:]))
        loss = ((y_f * weights[0]).sum() + (y_b * weights[1]).sum() + final.ssm.square().sum()
                + final.k_prev.sum() + final.phase.sin().sum())
        return torch.autograd.grad(loss, leaves, allow_unused=True)

    got = grads(lambda f, b, d_f, d_b, s: mamba3_scan_pair(f, b, d_f, d_b, initial_state=s, return_final_state=True,
                                                           chunk_size=4, impl="reference"))
    want = grads(loop_pair)
    names = [f"forward {n}" for n in SCAN_INPUTS] + [f"backward {n}" for n in SCAN_INPUTS] + ["D_f", "D_b"] + [
        f"state.{n}" for n in Mamba3State._fields]
    for name, g, w in zip(names, got, want):
        if w is None:
            assert g is None or not g.abs().max() > 0, name
            continue
        scan_tools.assert_close(f"grad {name} R={R}", g, w, 1e-11)


def test_float32_halves_match_two_calls_of_the_public_scan(scan_tools):
    from diffmamba.ops import mamba3_scan

    forward, backward, D_f, D_b = directions(scan_tools, 10, None, seed=90)
    forward = {n: t.float() for n, t in forward.items()}
    backward = {n: t.float() for n, t in backward.items()}
    D_f, D_b = D_f.float(), D_b.float()
    y_f, y_b, _ = mamba3_scan_pair(forward, backward, D_f, D_b, chunk_size=4, impl="reference")
    want_f, _ = mamba3_scan(**forward, D=D_f, chunk_size=4, impl="reference")
    want_b, _ = mamba3_scan(**backward, D=D_b, reverse=True, chunk_size=4, impl="reference")
    assert y_f.dtype == y_b.dtype == torch.float32
    scan_tools.assert_close("y forward", y_f, want_f, 1e-5)
    scan_tools.assert_close("y backward", y_b, want_b, 1e-5)


def test_triton_runs_the_two_directions_as_two_kernel_scans(scan_tools):
    """impl="triton" (the interpreter on CPU) goes straight to the kernels, forward then reverse."""
    forward, backward, D_f, D_b = directions(scan_tools, 9, None, seed=92)
    forward = {n: t.float() for n, t in forward.items()}
    backward = {n: t.float() for n, t in backward.items()}
    state = Mamba3State(*(t.float() for t in scan_tools.random_state(seed=93)))
    y_f, y_b, final = mamba3_scan_pair(forward, backward, D_f.float(), D_b.float(), initial_state=state,
                                       return_final_state=True, chunk_size=4, impl="triton")
    want_f, want_b, want_final = loop_pair(forward, backward, D_f.float(), D_b.float(), state)
    scan_tools.assert_close("y forward", y_f, want_f, 1e-4)
    scan_tools.assert_close("y backward", y_b, want_b, 1e-4)
    scan_tools.assert_states_close("final", final, want_final, 1e-4)


def test_bad_arguments_name_the_problem(scan_tools):
    forward, backward, D_f, D_b = directions(scan_tools, 5, None, seed=95)
    with pytest.raises(ValueError, match="forward and backward q must match in shape and dtype"):
        mamba3_scan_pair(forward, scan_tools.time_slice(backward, 0, 4), D_f, D_b)
    with pytest.raises(ValueError, match="both directions a D, or neither"):
        mamba3_scan_pair(forward, backward, D_f, None)
    with pytest.raises(ValueError, match="exactly the scan inputs"):
        mamba3_scan_pair({**forward, "D": D_f}, backward, D_f, D_b)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        mamba3_scan_pair(forward, backward, D_f, D_b, chunk_size=0)
