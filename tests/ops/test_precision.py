"""float32 / bf16 inputs: fp32 accumulation, finite, close to float64; contract dtypes."""

import pytest
import torch

from diffmamba.ops import mamba3_scan
from diffmamba.ops.reference import scan_chunked_ref, scan_recurrent_ref

SHAPE = dict(B=2, T=300, H=4, P=16, N=16, S=4)


def _as_float64(inputs):
    return {n: (None if t is None else t.double()) for n, t in inputs.items()}


@pytest.mark.parametrize("R", [None, 2])
@pytest.mark.parametrize("reverse", [False, True])
def test_float32_chunked_close_to_float64(scan_tools, R, reverse):
    inputs = scan_tools.make_inputs(**SHAPE, R=R, dtype=torch.float32, seed=40)
    y32, s32 = scan_chunked_ref(**inputs, reverse=reverse)
    y64, s64 = scan_recurrent_ref(**_as_float64(inputs), reverse=reverse)
    assert y32.dtype == torch.float32 and s32.ssm.dtype == torch.float32 and s32.phase.dtype == torch.float32
    assert torch.isfinite(y32).all() and torch.isfinite(s32.ssm).all()
    scan_tools.assert_close(f"fp32 y R={R} reverse={reverse}", y32, y64, 5e-6)
    scan_tools.assert_states_close(f"fp32 R={R} reverse={reverse}", s32, s64, 5e-6)


@pytest.mark.parametrize("reverse", [False, True])
def test_bfloat16_inputs_accumulate_in_float32(scan_tools, reverse):
    inputs = scan_tools.make_inputs(**SHAPE, dtype=torch.bfloat16, seed=41)
    y16, s16 = scan_chunked_ref(**inputs, reverse=reverse)
    assert y16.dtype == torch.bfloat16
    assert s16.ssm.dtype == torch.float32 and s16.phase.dtype == torch.float32
    assert s16.k_prev.dtype == torch.bfloat16 and s16.v_prev.dtype == torch.bfloat16
    assert torch.isfinite(y16.float()).all()
    # Same (bf16-rounded) inputs in float64: what remains is fp32 accumulation plus the final
    # rounding of y to bf16 (relative 2^-8) and of k_prev/v_prev.
    y64, s64 = scan_recurrent_ref(**_as_float64(inputs), reverse=reverse)
    scan_tools.assert_close(f"bf16 y reverse={reverse}", y16, y64, 5e-3)
    scan_tools.assert_close(f"bf16 ssm reverse={reverse}", s16.ssm, s64.ssm, 2e-6)
    scan_tools.assert_close(f"bf16 k_prev reverse={reverse}", s16.k_prev, s64.k_prev, 5e-3)


def test_public_entry_float32_matches_float64_loop(scan_tools):
    inputs = scan_tools.make_inputs(**SHAPE, dtype=torch.float32, seed=42)
    y, state = mamba3_scan(**inputs, return_final_state=True, impl="reference")
    y64, s64 = scan_recurrent_ref(**_as_float64(inputs))
    scan_tools.assert_close("mamba3_scan fp32 y", y, y64, 5e-6)
    scan_tools.assert_states_close("mamba3_scan fp32", state, s64, 5e-6)
