"""Block = x + mixer(norm(x)), then x + mlp(norm(x)): the residual stream is never dropped."""
import torch

from diffmamba.config import ModelConfig
from diffmamba.modules import RMSNorm, ResidualBlock


def tiny_config(**overrides) -> ModelConfig:
    values = dict(vocab_size=11, d_model=16, n_layers=2, headdim=8, d_state=8, chunk_size=4)
    values.update(overrides)
    return ModelConfig(**values)


def test_block_is_x_plus_f_of_x():
    torch.manual_seed(0)
    block = ResidualBlock(tiny_config()).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    for causal in (False, True):
        after_mixer = x + block.mixer(block.mixer_norm(x), causal=causal)
        expected = after_mixer + block.mlp(block.mlp_norm(after_mixer))
        torch.testing.assert_close(block(x, causal=causal), expected)


def test_block_with_zero_branches_is_identity():
    block = ResidualBlock(tiny_config())
    with torch.no_grad():
        block.mixer.out_proj.weight.zero_()
        block.mlp.down.weight.zero_()
    x = torch.randn(2, 5, 16)
    assert torch.equal(block(x), x)
    assert torch.equal(block(x, causal=True), x)


def test_block_step_matches_causal_forward():
    torch.manual_seed(1)
    block = ResidualBlock(tiny_config(mimo_rank=2)).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    state = block.mixer.init_state(2)
    stepped = []
    for t in range(6):
        out_t, state = block.step(x[:, t], state)
        stepped.append(out_t)
    torch.testing.assert_close(torch.stack(stepped, 1), block(x, causal=True), rtol=1e-10, atol=1e-12)


def test_rmsnorm():
    norm = RMSNorm(4, eps=0.0)
    x = torch.tensor([[3.0, -3.0, 3.0, -3.0]], dtype=torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), torch.tensor([[1.0, -1.0, 1.0, -1.0]]))
