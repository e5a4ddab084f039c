"""The two-stream forward pass and the block NELBO: block-by-block equivalence and both ends of the dial."""
import pytest
import torch

from block_helpers import V, assert_logits_close, assert_states_close, random_tokens, tiny_model
from diffmamba.objectives.bd3lm import block_diffusion_loss, block_diffusion_nll, mask_blocks
from diffmamba.modules.two_stream import block_streams
from diffmamba.objectives.mdlm import diffusion_loss
from diffmamba.objectives.schedule import make_schedule
from stream_helpers import sequential_prefix_states

MASK = V


@pytest.mark.parametrize("tie", ["full", "partial", "none"])
@pytest.mark.parametrize("block_size", [1, 4])
def test_streams_equal_block_by_block_computation(tie, block_size):
    """Clean stream: block b = the model on block b from the cache of blocks < b. Noisy stream:
    the model on noisy block b from that same clean cache. Final states: the cache after all."""
    model = tiny_model(tie=tie, mimo_rank=2 if tie == "none" else 1)
    clean = random_tokens(length=12)
    noisy = torch.where(random_tokens(length=12, seed=5) < 5, MASK, clean)
    before, after = sequential_prefix_states(model, clean, block_size)
    clean_out, final = block_streams(model, clean, block_size, return_final_states=True)
    noisy_out = model(clean, block_size=block_size, noisy=noisy)
    for b, cache in enumerate(before):
        span = slice(b * block_size, (b + 1) * block_size)
        assert_logits_close(clean_out[:, span], model(clean[:, span], fwd_states=cache))
        assert_logits_close(noisy_out[:, span], model(noisy[:, span], fwd_states=cache))
    for got, want in zip(final, after):
        assert_states_close(got, want, tol=1e-10)


def test_block_size_T_is_plain_diffusion():
    """One block, no prefix: the noisy stream is the diffusion-mode model, and the loss under the
    same times and masking generator equals the diffusion loss."""
    model = tiny_model()
    x0 = random_tokens(batch=3, length=12)
    schedule = make_schedule("loglinear", 1e-3)
    t = torch.tensor([0.2, 0.55, 0.9])
    xt = mask_blocks(x0, t[:, None], 12, schedule, MASK, torch.Generator().manual_seed(3))
    assert (xt == MASK).any() and (xt != MASK).any()
    assert_logits_close(model(x0, block_size=12, noisy=xt), model(xt, mode="diffusion"))
    # The two-stream path itself (which a single block with no prefix skips), from zero states:
    general = block_streams(model, x0, 12, noisy=xt, initial_states=model.init_state(3))
    assert_logits_close(general, model(xt, mode="diffusion"))
    block = block_diffusion_loss(model, x0, t[:, None], 12, schedule, torch.Generator().manual_seed(3))
    plain = diffusion_loss(model, x0, t, schedule, torch.Generator().manual_seed(3))
    assert int(block.num_tokens) == int(plain.num_tokens) == 36
    torch.testing.assert_close(block.nll_sum, plain.nll_sum, rtol=1e-6, atol=1e-6)


def test_block_size_1_is_next_token_prediction_from_the_prefix():
    """L' = 1: every noisy token is masked and its forward states are the clean prefix's, so the
    logits at i are f(x_{<i}) = model([MASK], fwd_states=cache(x_{<i})): independent of x_{>=i},
    and the loss is exactly the mean next-token CE of those logits (weight 1, no noise)."""
    model = tiny_model()
    x0 = random_tokens(length=10)
    xt = mask_blocks(x0, torch.zeros(2, 10), 1, make_schedule(), MASK)
    assert torch.all(xt == MASK)
    logits = model(x0, block_size=1, noisy=xt)
    before, _ = sequential_prefix_states(model, x0, 1)
    direct = torch.stack([model(torch.full((2, 1), MASK), fwd_states=cache)[:, 0] for cache in before], dim=1)
    assert_logits_close(logits, direct)
    changed_suffix = x0.clone()
    changed_suffix[:, 6:] = (x0[:, 6:] + 1) % V
    assert_logits_close(model(changed_suffix, block_size=1, noisy=xt)[:, :7], logits[:, :7])
    terms = block_diffusion_loss(model, x0, torch.rand(2, 10), 1, make_schedule())
    ce = torch.nn.functional.cross_entropy(direct.flatten(0, 1), x0.flatten())
    torch.testing.assert_close(terms.loss, ce, rtol=1e-10, atol=1e-10)


def test_gradients_reach_the_clean_stream():
    """With an untied head and L' = 1, the embedding rows of real tokens are used only by the
    clean stream (the noisy stream is all-mask), so their gradient proves the clean stream trains."""
    model = tiny_model(tie_embeddings=False)
    x0 = random_tokens(length=8)
    block_diffusion_loss(model, x0, torch.ones(2, 8), 1, make_schedule()).loss.backward()
    used = torch.unique(x0[:, :-1])  # the last token is never a prefix of anything
    assert torch.all(model.embedding.weight.grad[used].abs().sum(-1) > 0)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_padding_is_invisible_to_valid_positions():
    model = tiny_model()
    x0 = random_tokens(length=12)
    valid = torch.arange(12)[None, :].expand(2, 12) < torch.tensor([[7], [12]])
    xt = torch.where(random_tokens(length=12, seed=9) < 6, MASK, x0)
    other = x0.clone()
    other[0, 7:] = (other[0, 7:] + 3) % V
    other_xt = xt.clone()
    other_xt[0, 7:] = MASK
    got = model(x0, block_size=4, noisy=xt, valid_mask=valid)
    want = model(other, block_size=4, noisy=other_xt, valid_mask=valid)
    assert_logits_close(got[valid], want[valid])
    t = torch.full((2, 3), 0.7)
    terms = block_diffusion_loss(model, x0, t, 4, make_schedule(), torch.Generator().manual_seed(0), valid)
    assert int(terms.num_tokens) == 19


def test_eval_nll_is_seeded_and_counts_tokens():
    model = tiny_model()
    x0 = random_tokens(batch=4, length=12)
    a = block_diffusion_nll(model, x0, 4, make_schedule(), torch.Generator().manual_seed(1))
    b = block_diffusion_nll(model, x0, 4, make_schedule(), torch.Generator().manual_seed(1))
    c = block_diffusion_nll(model, x0, 4, make_schedule(), torch.Generator().manual_seed(2))
    assert a[1] == 48 and torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_block_size_that_does_not_divide_is_refused_with_divisors():
    model = tiny_model()
    with pytest.raises(ValueError, match="pick one of 1, 2, 3, 4, 6, 12"):
        model(random_tokens(length=12), block_size=5, noisy=random_tokens(length=12))
