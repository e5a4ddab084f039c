"""Block-boundary continuation states of one long scan (diffmamba.ops.boundary)."""
import pytest
import torch

from block_helpers import assert_states_close, random_state, scan_inputs
from diffmamba.ops.boundary import block_boundary_states
from diffmamba.ops import Mamba3State, mamba3_scan

TIME = ("q", "k", "v", "log_decay", "dt", "trap", "dphase")


def _slice(inputs, start, stop):
    return {n: (x[:, start:stop] if n in TIME else x) for n, x in inputs.items()}


@pytest.mark.parametrize("R", [None, 2])
@pytest.mark.parametrize("block_size", [1, 3, 12])
@pytest.mark.parametrize("with_initial", [False, True])
def test_entering_states_are_the_prefix_scans_continuation_states(R, block_size, with_initial):
    """entering[b] equals the final state of the per-token loop over tokens [0, b L'), and a scan
    of block b started from it reproduces the one long scan there: the state carries k_prev /
    v_prev and excludes the next token's trapezoid term (which the continuing scan adds)."""
    inputs = scan_inputs(R=R)
    initial = random_state(R=R) if with_initial else None
    states = block_boundary_states(**inputs, block_size=block_size, initial_state=initial)
    y_full, final = mamba3_scan(**inputs, initial_state=initial, return_final_state=True, impl="recurrent")
    T = inputs["k"].shape[1]
    for b in range(T // block_size):
        start = b * block_size
        entering = Mamba3State(*(x[:, b] for x in states.entering))
        if start == 0:
            want = initial if with_initial else Mamba3State(*(torch.zeros_like(x) for x in entering))
        else:
            _, want = mamba3_scan(**_slice(inputs, 0, start), initial_state=initial, return_final_state=True,
                                  impl="recurrent")
        assert_states_close(entering, want)
        y_block, _ = mamba3_scan(**_slice(inputs, start, start + block_size), initial_state=entering)
        torch.testing.assert_close(y_block, y_full[:, start:start + block_size], rtol=1e-12, atol=1e-12)
    assert_states_close(states.final, final)


def test_state_dtypes_follow_the_scan_contract():
    """float32 scalars with bf16 keys/values: ssm and phase float32, k_prev / v_prev bf16."""
    inputs = scan_inputs()
    for name in ("k", "v", "q"):
        inputs[name] = inputs[name].bfloat16()
    for name in ("log_decay", "dt", "trap", "dphase"):
        inputs[name] = inputs[name].float()
    states = block_boundary_states(**inputs, block_size=4)
    assert [x.dtype for x in states.entering] == [torch.float32, torch.bfloat16, torch.bfloat16, torch.float32]
    assert states.entering.ssm.shape == (2, 3, 2, 3, 6)
    _, want = mamba3_scan(**_slice(inputs, 0, 8), return_final_state=True)
    torch.testing.assert_close(states.entering.ssm[:, 2], want.ssm, rtol=1e-5, atol=1e-5)


def test_gradients_flow_into_inputs_and_initial_state():
    inputs = scan_inputs(B=1, T=4, H=1, P=2, N=4, S=1)
    initial = random_state(B=1, H=1, P=2, N=4, S=1)
    names = ("k", "v", "log_decay", "dt", "trap", "dphase")

    def entering_after(*leaves):
        args = dict(inputs, **dict(zip(names, leaves[:6])))
        states = block_boundary_states(**args, block_size=2, initial_state=Mamba3State(*leaves[6:]))
        return tuple(states.entering) + tuple(states.final)

    leaves = tuple(inputs[n].clone().requires_grad_() for n in names) + tuple(
        x.clone().requires_grad_() for x in initial)
    assert torch.autograd.gradcheck(entering_after, leaves)


def test_block_size_must_divide_the_length():
    with pytest.raises(ValueError, match="divide T = 12"):
        block_boundary_states(**scan_inputs(), block_size=5)


def test_autocast_does_not_lower_the_state_precision():
    """Under bf16 autocast (training on GPU) the states still accumulate in float32."""
    inputs = {n: (x.float() if x is not None else None) for n, x in scan_inputs(T=16).items()}
    plain = block_boundary_states(**inputs, block_size=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = block_boundary_states(**inputs, block_size=4)
    for got, want in zip(mixed.entering, plain.entering):
        assert got.dtype == want.dtype and torch.equal(got, want)
