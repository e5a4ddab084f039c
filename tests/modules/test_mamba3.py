"""One Mamba-3 direction: activations, init, shapes/dtypes, reverse, step, padding (docs/mamba3.md §1)."""
import math

import pytest
import torch

from diffmamba.config import ModelConfig
from diffmamba.modules import Mamba3Mixer, heavy_tail, ssm_proj_width


def tiny_config(**overrides) -> ModelConfig:
    values = dict(vocab_size=11, d_model=16, n_layers=2, headdim=8, d_state=8, chunk_size=4)
    values.update(overrides)
    return ModelConfig(**values)


def test_heavy_tail_values_and_finite_gradients():
    u = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.5], dtype=torch.float64, requires_grad=True)
    expected = torch.tensor([1 / 4, 1 / 2, 1.0, 2.0, 3.5], dtype=torch.float64)
    f = heavy_tail(u)
    torch.testing.assert_close(f, expected)
    f.sum().backward()
    # derivative 1 on u >= 0 and 1/(1-u)^2 below: continuous at 0, and no NaN from the pole at u = 1
    torch.testing.assert_close(u.grad, torch.tensor([1 / 16, 1 / 4, 1.0, 1.0, 1.0], dtype=torch.float64))


def test_init_matches_spec():
    cfg = tiny_config(mimo_rank=2, d_model=32, headdim=8)  # H = 8 heads for a spread of dt
    mixer = Mamba3Mixer(cfg)
    d = mixer.direction
    dt0 = torch.nn.functional.softplus(d.dt_bias)
    assert torch.all(dt0 >= cfg.dt_min * (1 - 1e-5)) and torch.all(dt0 <= cfg.dt_max * (1 + 1e-5))
    for ones in (d.B_bias, d.C_bias, d.D, d.mimo_z, d.B_norm.weight, d.C_norm.weight):
        assert torch.all(ones == 1)
    assert torch.all(d.mimo_x == 0.5) and torch.all(d.mimo_o == 0.5)
    assert d.B_bias.shape == (cfg.nheads, 2, cfg.d_state)
    assert mixer.in_proj.out_features == 2 * cfg.d_inner + ssm_proj_width(cfg)
    assert ssm_proj_width(cfg) == 2 * 2 * 8 + 3 * 8 + 2  # 2RN + 3H + S
    assert mixer.in_proj.bias is None and mixer.out_proj.bias is None


@pytest.mark.parametrize("rank", [1, 2])
def test_scan_inputs_shapes_and_decay_dtypes_under_bf16(rank):
    cfg = tiny_config(mimo_rank=rank)
    mixer = Mamba3Mixer(cfg)
    u = torch.randn(2, 5, cfg.d_model).bfloat16()
    z, x, ssm = mixer.to(torch.bfloat16).project(u)
    inputs = mixer.direction.scan_inputs(x, ssm)
    H, P, N, S = cfg.nheads, cfg.headdim, cfg.d_state, cfg.num_rope_angles
    rank_axis = (rank,) if rank > 1 else ()
    assert inputs["q"].shape == (2, 5, H, *rank_axis, N) and inputs["q"].dtype == torch.bfloat16
    assert inputs["v"].shape == (2, 5, H, *rank_axis, P) and inputs["v"].dtype == torch.bfloat16
    assert inputs["dphase"].shape == (2, 5, H, S)
    for name in ("log_decay", "dt", "trap", "dphase"):
        assert inputs[name].dtype == torch.float32, name
    assert torch.all(inputs["log_decay"] < 0) and torch.all(inputs["dt"] > 0)
    assert torch.all(inputs["trap"] > 0) and torch.all(inputs["trap"] < 1)
    # |dphase| = dt * pi * |tanh| < pi * dt
    assert torch.all(inputs["dphase"].abs() < math.pi * inputs["dt"][..., None])


@pytest.mark.parametrize("rank", [1, 2])
def test_reverse_is_the_flipped_forward_layer(rank):
    torch.manual_seed(0)
    mixer = Mamba3Mixer(tiny_config(mimo_rank=rank)).double()
    u = torch.randn(2, 9, 16, dtype=torch.float64)
    torch.testing.assert_close(mixer(u, reverse=True), mixer(u.flip(1)).flip(1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rank", [1, 2])
def test_step_loop_reproduces_forward(rank):
    torch.manual_seed(1)
    mixer = Mamba3Mixer(tiny_config(mimo_rank=rank)).double()
    u = torch.randn(3, 7, 16, dtype=torch.float64)
    full, final = mixer(u, return_final_state=True)
    state = mixer.init_state(3)
    outputs = []
    for t in range(u.shape[1]):
        out_t, state = mixer.step(u[:, t], state)
        outputs.append(out_t)
    torch.testing.assert_close(torch.stack(outputs, 1), full, rtol=1e-10, atol=1e-12)
    for got, expected in zip(state, final):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_padding_is_exact_in_both_directions():
    torch.manual_seed(2)
    mixer = Mamba3Mixer(tiny_config()).double()
    u = torch.randn(1, 6, 16, dtype=torch.float64)
    padded = torch.cat((u, torch.randn(1, 3, 16, dtype=torch.float64)), dim=1)
    mask = torch.tensor([[True] * 6 + [False] * 3])
    for reverse in (False, True):
        expected = mixer(u, reverse=reverse)
        got = mixer(padded, reverse=reverse, valid_mask=mask)[:, :6]
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # without the mask the reverse direction reads the pad tokens
    assert not torch.allclose(mixer(padded, reverse=True)[:, :6], mixer(u, reverse=True))


def test_bad_valid_mask_is_rejected():
    mixer = Mamba3Mixer(tiny_config())
    with pytest.raises(ValueError, match="valid_mask"):
        mixer(torch.randn(2, 4, 16), valid_mask=torch.ones(2, 4))
