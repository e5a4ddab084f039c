"""DiffMamba: modes, AR decoding equivalence, padding, tie modes, checkpoints (docs/contracts.md §2)."""
import json
import os

import pytest
import torch

from diffmamba.config import ModelConfig
from diffmamba.core.errors import UserError
from diffmamba.model import DiffMamba

TIES = ["full", "partial", "none"]
V = 11  # tokenizer vocabulary; the mask token is id 11


def tiny_model(dtype=torch.float64, seed=0, **overrides) -> DiffMamba:
    values = dict(vocab_size=V, d_model=16, n_layers=2, headdim=8, d_state=8, chunk_size=4)
    values.update(overrides)
    torch.manual_seed(seed)
    return DiffMamba(ModelConfig(**values)).to(dtype)


def tokens(batch=2, length=10, seed=0) -> torch.Tensor:
    return torch.randint(0, V + 1, (batch, length), generator=torch.Generator().manual_seed(seed))


def finite_close(got, expected, **tolerances):
    """Compare logits, whose mask column is -inf in both."""
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(got[finite], expected[finite], **tolerances)


@pytest.mark.parametrize("mode", ["diffusion", "ar"])
def test_logits_shape_and_mask_column(mode):
    model = tiny_model(torch.float32)
    x = tokens()
    logits = model(x, mode=mode)
    assert logits.shape == (2, 10, V + 1) and model.mask_token_id == V
    assert torch.all(logits[..., V] == float("-inf"))
    assert torch.all(torch.isfinite(logits[..., :V]))
    hidden = model(x, mode=mode, return_hidden=True)
    assert hidden.shape == (2, 10, 16)
    assert torch.equal(model.logits(hidden), logits)
    # a loss over the -inf column backpropagates finite gradients
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.clamp(max=V - 1).flatten()).backward()
    assert all(torch.all(torch.isfinite(p.grad)) for p in model.parameters() if p.grad is not None)


def test_model_keeps_the_residual_stream():
    """With every residual branch zeroed the trunk is the identity: hidden = norm(embedding)."""
    model = tiny_model(torch.float32)
    with torch.no_grad():
        for block in model.blocks:
            block.mixer.out_proj.weight.zero_()
            block.mlp.down.weight.zero_()
    x = tokens()
    expected = model.final_norm(model.embedding(x))
    assert torch.equal(model(x, return_hidden=True), expected)


@pytest.mark.parametrize("tie", TIES)
def test_ar_mode_is_causal_and_diffusion_sees_both_sides(tie):
    model = tiny_model(tie=tie)
    x = tokens(length=9)
    changed = x.clone()
    changed[:, 6] = (changed[:, 6] + 1) % (V + 1)
    finite_close(model(changed, mode="ar")[:, :6], model(x, mode="ar")[:, :6], rtol=0, atol=0)
    assert not torch.allclose(model(changed, mode="ar")[:, 6:, :V], model(x, mode="ar")[:, 6:, :V])
    earlier = (model(changed)[:, :6, :V] - model(x)[:, :6, :V]).abs().amax(dim=-1)
    assert torch.all(earlier > 1e-9), "diffusion mode must see tokens to the right"


@pytest.mark.parametrize("tie,rank", [("partial", 1), ("full", 1), ("none", 1), ("partial", 2)])
def test_step_and_prefill_reproduce_ar_forward(tie, rank):
    model = tiny_model(tie=tie, mimo_rank=rank)
    x = tokens(length=9)
    expected = model(x, mode="ar")
    state = model.init_state(2)
    stepped = []
    for t in range(x.shape[1]):
        logits_t, state = model.step(x[:, t], state)
        stepped.append(logits_t)
    finite_close(torch.stack(stepped, 1), expected, rtol=1e-10, atol=1e-12)
    prompt_logits, state = model.prefill(x[:, :5])
    continued = [prompt_logits]
    for t in range(5, 9):
        logits_t, state = model.step(x[:, t], state)
        continued.append(logits_t[:, None])
    finite_close(torch.cat(continued, 1), expected, rtol=1e-10, atol=1e-12)
    # prefill can also continue a prefilled state
    _, half = model.prefill(x[:, :4])
    rest, _ = model.prefill(x[:, 4:], half)
    finite_close(rest, expected[:, 4:], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tie,rank", [("partial", 1), ("none", 1), ("partial", 2)])
def test_prefill_every_token_states_equal_prefix_prefills(tie, rank):
    """Speculative decoding continues from the state after any prefix of its verification scan."""
    model = tiny_model(tie=tie, mimo_rank=rank)
    x = tokens(length=9)
    _, start = model.prefill(x[:, :3])  # a resumed scan: k_prev, v_prev and the phase matter
    logits, every = model.prefill(x[:, 3:], start, every_token=True)
    finite_close(logits, model.prefill(x[:, 3:], start)[0], rtol=1e-10, atol=1e-12)  # states vs chunked form
    for t in range(6):
        _, want = model.prefill(x[:, 3:4 + t], start)
        for layer_every, layer_want in zip(every, want):
            for got_field, want_field in zip(layer_every, layer_want):
                finite_close(got_field[:, t], want_field, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="forward"):
        tiny_model().blocks[0].mixer.fwd.scan(None, None, reverse=True, return_final_state="every")


def test_mimo_model_runs_in_both_modes():
    model = tiny_model(torch.float32, mimo_rank=2)
    x = tokens()
    for mode in ("diffusion", "ar"):
        logits = model(x, mode=mode)
        assert torch.all(torch.isfinite(logits[..., :V]))
    logits_t, state = model.step(x[:, 0], None)
    finite_close(logits_t, model(x[:, :1], mode="ar")[:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tie", TIES)
def test_right_padding_with_valid_mask_equals_unpadded(tie):
    model = tiny_model(tie=tie)
    short = tokens(batch=1, length=6, seed=1)
    padded = torch.cat((short, tokens(batch=1, length=4, seed=2)), dim=1)
    mask = torch.tensor([[True] * 6 + [False] * 4])
    for mode in ("diffusion", "ar"):
        finite_close(model(padded, mode=mode, valid_mask=mask)[:, :6], model(short, mode=mode),
                     rtol=1e-10, atol=1e-12)


def test_diffusion_forward_states_continue_block_by_block():
    """Blockwise diffusion passes forward states between blocks; in AR mode the same hand-off is
    exact continuation."""
    model = tiny_model()
    x = tokens(length=8)
    out_a, states_a = model(x[:, :4], fwd_states=None, return_fwd_states=True)
    out_b, states_b = model(x[:, 4:], fwd_states=states_a, return_fwd_states=True)
    assert len(states_b) == 2 and out_b.shape == (2, 4, V + 1)
    # the second block depends on the first only through the states
    fresh = model(x[:, 4:])
    assert not torch.allclose(out_b[..., :V], fresh[..., :V])
    again, _ = model(x[:, 4:], fwd_states=states_a, return_fwd_states=True)
    assert torch.equal(again, out_b)
    with pytest.raises(ValueError, match="one state per layer"):
        model(x, fwd_states=states_a[:1])


def test_tie_modes_and_embedding_tying_change_parameter_counts():
    counts = [tiny_model(tie=tie).num_parameters() for tie in TIES]
    assert counts[0] < counts[1] < counts[2]
    tied, untied = tiny_model(), tiny_model(tie_embeddings=False)
    assert untied.num_parameters() - tied.num_parameters() == (V + 1) * 16
    assert tied.num_parameters(non_embedding=True) == tied.num_parameters() - (V + 1) * 16


def test_init_scales_residual_branch_ends():
    """kaiming-uniform(a=sqrt 5) has bound 1/sqrt(fan_in); branch ends get / sqrt(2 * n_layers)."""
    model = tiny_model(torch.float32, d_model=64, n_layers=8)
    block = model.blocks[0]
    for linear in (block.mixer.out_proj, block.mlp.down):
        bound = linear.weight.shape[1] ** -0.5 / 4  # sqrt(2 * 8) = 4
        assert bound / 2 < linear.weight.abs().max() <= bound + 1e-7
    in_proj_bound = 64 ** -0.5
    assert in_proj_bound / 2 < block.mixer.in_proj.weight.abs().max() <= in_proj_bound + 1e-7
    assert abs(model.embedding.weight.std().item() - 0.02) < 0.003


def test_optimizer_groups_exclude_norms_biases_and_skips():
    model = tiny_model(torch.float32, mimo_rank=2)
    decay, no_decay = model.optimizer_groups(0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "embedding.weight" in decay_names and "blocks.0.mixer.in_proj.weight" in decay_names
    assert {"blocks.0.mixer.fwd.dt_bias", "blocks.0.mixer.fwd.D", "blocks.0.mixer.fwd.B_bias",
            "blocks.0.mixer.rev.mimo_x", "blocks.0.mixer_norm.weight", "final_norm.weight"} <= no_decay_names
    assert len(decay_names) + len(no_decay_names) == len(list(model.parameters()))


def test_flops_estimate():
    model = tiny_model(torch.float32)
    diffusion, ar = model.estimate_flops_per_token(64), model.estimate_flops_per_token(64, mode="ar")
    assert diffusion > ar > 6 * model.num_parameters(non_embedding=True)


def test_save_and_load_round_trip_bit_exactly(tmp_path):
    for dtype in (torch.float32, torch.float64):
        model = tiny_model(dtype, tie_embeddings=False, mimo_rank=2)
        model.save_pretrained(str(tmp_path / "ckpt"))
        assert sorted(os.listdir(tmp_path / "ckpt")) == ["config.json", "model.safetensors"]
        meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
        assert meta["model"]["mimo_rank"] == 2 and "diffmamba_version" in meta
        loaded = DiffMamba.from_pretrained(str(tmp_path / "ckpt"))
        assert loaded.config == model.config
        original, restored = model.state_dict(), loaded.state_dict()
        assert original.keys() == restored.keys()
        for name in original:
            assert restored[name].dtype == dtype and torch.equal(original[name], restored[name]), name
        x = tokens()
        assert torch.equal(loaded(x), model(x))


def test_from_pretrained_explains_bad_folders(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        DiffMamba.from_pretrained(str(tmp_path / "missing"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.json").write_text('{"hello": 1}')
    with pytest.raises(UserError, match="not a diffmamba checkpoint"):
        DiffMamba.from_pretrained(str(tmp_path / "notes"))
    tiny_model().save_pretrained(str(tmp_path / "ckpt"))
    os.remove(tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(UserError, match="no model.safetensors"):
        DiffMamba.from_pretrained(str(tmp_path / "ckpt"))


def test_missing_vocab_size_and_bad_mode_are_explained():
    with pytest.raises(UserError, match="vocab_size"):
        DiffMamba(ModelConfig(vocab_size=None))
    with pytest.raises(ValueError, match="mode"):
        tiny_model()(tokens(), mode="causal")


def test_smoke_command(capsys):
    from diffmamba.cli import main

    args = ["smoke", "--steps", "1", "--batch-size", "2", "--seq-len", "8",
            "--set", "d_model=16", "--set", "n_layers=1", "--set", "headdim=8", "--set", "d_state=8",
            "--set", "vocab_size=13"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "device: cpu" in out and "ms/step" in out
    assert out.count("finite") == 2 and "NON-FINITE" not in out
    if not torch.cuda.is_available():
        assert main(["smoke", "--device", "cuda"]) == 2
        assert "no GPU" in capsys.readouterr().err
