"""BiMixer: tie modes share what they promise; causal vs bidirectional; forward-state handoff."""
import pytest
import torch

from diffmamba.config import ModelConfig
from diffmamba.modules import BiMixer, Mamba3Mixer, ssm_proj_width

TIES = ["full", "partial", "none"]


def tiny_config(**overrides) -> ModelConfig:
    values = dict(vocab_size=11, d_model=16, n_layers=2, headdim=8, d_state=8, chunk_size=4)
    values.update(overrides)
    return ModelConfig(**values)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("rank", [1, 2])
def test_tie_modes_parameter_counts(rank):
    cfg = tiny_config(mimo_rank=rank)
    full, partial, none = (count(BiMixer(cfg, tie)) for tie in TIES)
    one_direction = Mamba3Mixer(cfg)
    direction_params = count(one_direction.direction)
    # full: one unidirectional layer plus a second set of per-direction SSM parameters
    assert full == count(one_direction) + direction_params
    # partial: full plus the reverse direction's B, C, dd_dt, dd_A, trap, angle rows of in_proj
    assert partial == full + cfg.d_model * ssm_proj_width(cfg)
    assert none == 2 * count(one_direction)
    assert full < partial < none


@pytest.mark.parametrize("tie", TIES)
def test_causal_uses_forward_direction_only(tie):
    torch.manual_seed(0)
    mixer = BiMixer(tiny_config(), tie).double()
    u = torch.randn(2, 9, 16, dtype=torch.float64)
    changed = u.clone()
    changed[:, 5:] += 1.0
    torch.testing.assert_close(mixer(changed, causal=True)[:, :5], mixer(u, causal=True)[:, :5])
    # bidirectional: the change at t >= 5 reaches every earlier position
    difference = (mixer(changed) - mixer(u))[:, :5].abs().amax(dim=-1)
    assert torch.all(difference > 1e-8)
    # the reverse parameters are used only in diffusion (non-causal) mode
    mixer(u, causal=True).sum().backward()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in mixer.rev.parameters())
    if tie == "partial":
        reverse_rows = mixer.in_proj.weight.grad[2 * mixer.d_inner + mixer.ssm_width:]
        assert torch.all(reverse_rows == 0)


@pytest.mark.parametrize("tie", TIES)
def test_step_reproduces_causal_forward(tie):
    torch.manual_seed(1)
    mixer = BiMixer(tiny_config(), tie).double()
    u = torch.randn(2, 6, 16, dtype=torch.float64)
    full = mixer(u, causal=True)
    state = mixer.init_state(2)
    stepped = []
    for t in range(6):
        out_t, state = mixer.step(u[:, t], state)
        stepped.append(out_t)
    torch.testing.assert_close(torch.stack(stepped, 1), full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tie", TIES)
def test_forward_state_handoff(tie):
    """Split at t: the forward direction continues exactly, the reverse one sees only u[:, t:]."""
    torch.manual_seed(2)
    mixer = BiMixer(tiny_config(), tie).double()
    u = torch.randn(2, 11, 16, dtype=torch.float64)
    t = 6
    _, state = mixer(u[:, :t], return_fwd_state=True)
    second, final = mixer(u[:, t:], fwd_initial_state=state, return_fwd_state=True)
    _, final_whole = mixer(u, causal=True, return_fwd_state=True)
    for got, expected in zip(final, final_whole):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # out = fwd part + rev part (one shared linear out_proj): rev part of u[:, t:] alone is
    # mixer(u2) - mixer(u2, causal=True); the fwd part is the causal pass over the whole row.
    u2 = u[:, t:]
    expected = mixer(u, causal=True)[:, t:] + (mixer(u2) - mixer(u2, causal=True))
    torch.testing.assert_close(second, expected, rtol=1e-10, atol=1e-12)


def test_partial_directions_read_their_own_projection_rows():
    cfg = tiny_config()
    mixer = BiMixer(cfg, "partial")
    u = torch.randn(1, 3, 16)
    z, x, ssm_fwd, ssm_rev = mixer.project(u, causal=False)
    W = ssm_proj_width(cfg)
    weight = mixer.in_proj.weight
    torch.testing.assert_close(ssm_fwd, u @ weight[2 * cfg.d_inner: 2 * cfg.d_inner + W].T)
    torch.testing.assert_close(ssm_rev, u @ weight[2 * cfg.d_inner + W:].T)
    assert ssm_rev.shape[-1] == W
