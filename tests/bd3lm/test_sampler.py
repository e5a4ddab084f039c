"""The cached block sampler: exact cache, both ends of the dial, constant per-block cost, EOS."""
import pytest
import torch

from block_helpers import V, random_tokens, tiny_model
from diffmamba.sampling.bd3lm import block_sample
from diffmamba.sampling.base import SamplerOptions, denoiser_from_model
from diffmamba.sampling.registry import run_sampler
from diffmamba.core.errors import UserError

MASK = V


def prompt_canvas(prompt, length):
    """Canvas [B, length] holding ``prompt`` [B, P] as fixed tokens, masks after it."""
    batch, p = prompt.shape
    canvas = torch.full((batch, length), MASK)
    canvas[:, :p] = prompt
    fixed = torch.zeros(batch, length, dtype=torch.bool)
    fixed[:, :p] = True
    return canvas, fixed


class TokenCounter:
    """Records the tokens every network call processes (a pre-hook on the embedding, which every
    path — prefill, denoiser, commit — calls exactly once per call)."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.embedding.register_forward_pre_hook(lambda _, args: self.calls.append(args[0].numel()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("sampler", ["ancestral", "first-hitting", "remdm-cap"])
def test_cached_sampling_equals_recomputing_every_block_from_the_prefix(sampler):
    """Same seed, same tokens with the cache as when every block's states are recomputed from the
    whole committed prefix (float64 model; the prompt has one full block and a partial one)."""
    model = tiny_model()
    canvas, fixed = prompt_canvas(random_tokens(length=6), 18)
    options = SamplerOptions(steps=4)
    cached = block_sample(model, canvas, fixed, 4, sampler=sampler, options=options,
                          generator=torch.Generator().manual_seed(7))
    recomputed = block_sample(model, canvas, fixed, 4, sampler=sampler, options=options,
                              generator=torch.Generator().manual_seed(7), use_cache=False)
    assert torch.equal(cached.tokens, recomputed.tokens)
    assert cached.tokens.shape == (2, 18) and not (cached.tokens == MASK).any()
    assert torch.equal(cached.tokens[:, :6], canvas[:, :6])
    other_seed = block_sample(model, canvas, fixed, 4, sampler=sampler, options=options,
                              generator=torch.Generator().manual_seed(8))
    assert not torch.equal(other_seed.tokens, cached.tokens)


@pytest.mark.parametrize("sampler", ["ancestral", "confidence", "first-hitting"])
@pytest.mark.parametrize("prompt_length", [0, 3])
def test_block_size_T_is_the_plain_diffusion_sampler(sampler, prompt_length):
    model = tiny_model()
    canvas, fixed = prompt_canvas(random_tokens(length=prompt_length), 12)
    options = SamplerOptions(steps=6)
    block = block_sample(model, canvas, fixed, 12, sampler=sampler, options=options,
                         generator=torch.Generator().manual_seed(3))
    plain = run_sampler(sampler, denoiser_from_model(model), canvas, fixed, MASK, options,
                        torch.Generator().manual_seed(3))
    assert torch.equal(block.tokens, plain.tokens) and block.nfe == plain.nfe


def test_block_size_1_greedy_is_ar_decoding_of_the_prefix_function():
    """L' = 1: each block is one masked token whose logits are f(prefix) = model([MASK], fwd_states
    = clean cache of the prefix); greedy block sampling is greedy decoding of f, computed directly."""
    model = tiny_model()
    prompt = random_tokens(length=3)
    canvas, fixed = prompt_canvas(prompt, 9)
    got = block_sample(model, canvas, fixed, 1, sampler="ancestral", options=SamplerOptions(steps=2, temperature=0))
    x = prompt
    for _ in range(6):
        cache = None
        for i in range(x.shape[1]):  # the cache from scratch, one clean token at a time
            _, cache = model(x[:, i:i + 1], fwd_states=cache, return_fwd_states=True)
        logits = model(torch.full((2, 1), MASK), fwd_states=cache)[:, 0]
        x = torch.cat([x, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(got.tokens, x)


def test_per_block_cost_does_not_grow_with_the_context():
    """Every network call after the prefill processes B x L' tokens, and a generated block costs
    the same number of calls, at a 2-block and a 10-block context; without the cache the prefix
    recomputation grows with the context (the counter can tell the difference)."""
    model = tiny_model()
    options = SamplerOptions(steps=3)
    per_context = {}
    for prompt_blocks in (2, 10):
        canvas, fixed = prompt_canvas(random_tokens(length=4 * prompt_blocks), 4 * prompt_blocks + 8)
        with TokenCounter(model) as counter:
            block_sample(model, canvas, fixed, 4, sampler="ancestral-nocache", options=options,
                         generator=torch.Generator().manual_seed(0), prefill_chunk=1024)
        prefill, *rest = counter.calls
        assert prefill == 2 * 4 * prompt_blocks
        per_context[prompt_blocks] = rest
        with TokenCounter(model) as counter:
            block_sample(model, canvas, fixed, 4, sampler="ancestral-nocache", options=options,
                         generator=torch.Generator().manual_seed(0), use_cache=False)
        assert max(counter.calls) == 2 * 4 * (prompt_blocks + 1)  # the prefix before the last block
    assert per_context[2] == per_context[10] and set(per_context[2]) == {2 * 4}
    assert len(per_context[2]) == 2 * 3 + 1  # 3 denoiser calls per block, one commit in between


def test_prefill_in_chunks_gives_the_same_samples():
    model = tiny_model()
    canvas, fixed = prompt_canvas(random_tokens(length=13), 20)
    kwargs = dict(sampler="ancestral", options=SamplerOptions(steps=4))
    one = block_sample(model, canvas, fixed, 4, generator=torch.Generator().manual_seed(1), **kwargs)
    chunked = block_sample(model, canvas, fixed, 4, generator=torch.Generator().manual_seed(1), prefill_chunk=5,
                           **kwargs)
    assert torch.equal(one.tokens, chunked.tokens) and chunked.nfe == one.nfe + 2  # 3 prefill calls, not 1


def test_eos_stops_each_row_and_sampling():
    """The EOS is taken from a fixed-length greedy run, so the second run must stop at it: every
    generated position after a row's first EOS becomes EOS, and fewer blocks are sampled."""
    model = tiny_model()
    canvas, fixed = prompt_canvas(random_tokens(batch=1, length=2), 26)
    options = SamplerOptions(steps=4, temperature=0)
    full = block_sample(model, canvas, fixed, 4, options=options)
    eos = int(full.tokens[0, 5])
    first = int((full.tokens[0, 2:] == eos).nonzero()[0]) + 2
    stopped = block_sample(model, canvas, fixed, 4, options=options, eos_id=eos)
    assert torch.equal(stopped.tokens[0, :first + 1], full.tokens[0, :first + 1])
    assert torch.all(stopped.tokens[0, first:] == eos) and stopped.tokens.shape == (1, 26)
    assert stopped.nfe < full.nfe


def test_a_canvas_that_is_not_a_multiple_of_the_block_is_cut():
    model = tiny_model()
    result = block_sample(model, torch.full((2, 10), MASK), None, 4, options=SamplerOptions(steps=2),
                          generator=torch.Generator().manual_seed(0))
    assert result.tokens.shape == (2, 10) and not (result.tokens == MASK).any()


def test_bad_inputs_name_the_fix():
    model = tiny_model(max_seq_len=8)
    canvas, fixed = prompt_canvas(random_tokens(length=9), 12)
    with pytest.raises(UserError, match="more than the model's context of 8"):
        block_sample(model, canvas, fixed, 4)
    with pytest.raises(UserError, match="unknown sampler"):
        block_sample(model, canvas[:, :4], None, 4, sampler="nope")
    with pytest.raises(UserError, match="block size must be >= 1"):
        block_sample(model, canvas[:, :4], None, 0)
