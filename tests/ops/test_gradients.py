"""Autograd through the chunked form: gradcheck on tiny float64 inputs, and loop-vs-chunked grads."""

import pytest
import torch

from diffmamba.ops import Mamba3State
from diffmamba.ops.reference import scan_chunked_ref, scan_recurrent_ref

INPUT_NAMES = ("q", "k", "v", "log_decay", "dt", "trap", "dphase", "D")


def _leaves(inputs, state):
    """Every differentiable input, initial-state fields included, as fresh leaves."""
    tensors = [inputs[n] for n in INPUT_NAMES] + list(state)
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def _scan_outputs(scan, reverse, chunk_size, *leaves):
    """y and every final-state field, so gradients flowing out of the state are checked too."""
    inputs = dict(zip(INPUT_NAMES, leaves[: len(INPUT_NAMES)]))
    state = Mamba3State(*leaves[len(INPUT_NAMES) :])
    kwargs = {"chunk_size": chunk_size} if scan is scan_chunked_ref else {}
    y, final = scan(**inputs, reverse=reverse, initial_state=state, **kwargs)
    return (y, *final)


@pytest.mark.parametrize("R", [None, 2])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_chunked(scan_tools, R, reverse):
    # T = 5 with chunk 2: two full chunks plus a remainder, so the state pass and the padding
    # both sit on the gradient path.
    inputs = scan_tools.make_inputs(B=1, T=5, H=2, P=2, N=4, S=2, R=R, seed=30)
    state = scan_tools.random_state(B=1, H=2, P=2, N=4, S=2, R=R, seed=31)
    leaves = _leaves(inputs, state)
    assert torch.autograd.gradcheck(
        lambda *x: _scan_outputs(scan_chunked_ref, reverse, 2, *x), leaves, eps=1e-6, atol=1e-7, rtol=1e-5
    )


@pytest.mark.parametrize("R", [None, 3])
@pytest.mark.parametrize("reverse", [False, True])
def test_chunked_gradients_match_loop_gradients(scan_tools, R, reverse):
    """Larger than gradcheck can afford: every input gradient of chunked == that of the loop."""
    inputs = scan_tools.make_inputs(T=21, R=R, seed=32)
    state = scan_tools.random_state(R=R, seed=33)
    torch.manual_seed(34)
    grads = {}
    for scan in (scan_recurrent_ref, scan_chunked_ref):
        leaves = _leaves(inputs, state)
        outputs = _scan_outputs(scan, reverse, 8, *leaves)
        # A fixed random cotangent for each output (phase included).
        generator = torch.Generator().manual_seed(35)
        loss = sum((o * torch.randn(o.shape, generator=generator, dtype=o.dtype)).sum() for o in outputs)
        grads[scan] = torch.autograd.grad(loss, leaves)
    names = INPUT_NAMES + ("state.ssm", "state.k_prev", "state.v_prev", "state.phase")
    for name, g_loop, g_chunk in zip(names, grads[scan_recurrent_ref], grads[scan_chunked_ref]):
        scan_tools.assert_close(f"grad {name} R={R} reverse={reverse}", g_chunk, g_loop, 1e-11)
