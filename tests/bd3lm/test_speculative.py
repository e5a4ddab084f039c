"""Self-speculative decoding is lossless: greedy equals greedy AR token for token, and sampled
continuations follow AR's exact joint distribution (a chi-square test a wrong rule fails)."""
import itertools

import pytest
import torch

import diffmamba.sampling.speculative as speculative
from block_helpers import tiny_model
from diffmamba.config import MAX_DRAFT_LEN
from diffmamba.core.errors import UserError
from diffmamba.sampling.ar import ar_generate
from diffmamba.sampling.categorical import clean_distribution
from diffmamba.sampling.speculative import speculative_generate

CHI2_LIMIT = 110.0  # 63 degrees of freedom: P(chi2 > 110) ~ 2e-4; the wrong rule below scores ~800


def sharp_model(vocab_size, seed, scale=6.0):
    """A random float64 model whose distributions are far from uniform (a larger embedding scales the
    tied head), so AR mode and the untrained drafter disagree often and a wrong rule is visible."""
    model = tiny_model(vocab_size=vocab_size, seed=seed)
    with torch.no_grad():
        model.embedding.weight.mul_(scale)
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_speculative_equals_greedy_ar(seed):
    model = sharp_model(4, seed)
    drafted = accepted = 0
    for prompt_length, k, steps in [(1, 1, 1), (4, 3, 1), (4, 3, 2), (2, 6, 3)]:
        prompt = torch.randint(0, 4, (3, prompt_length), generator=torch.Generator().manual_seed(seed + k))
        want = ar_generate(model, prompt, 11, torch.Generator(), temperature=0)
        got = speculative_generate(model, prompt, 11, torch.Generator(), draft_len=k, draft_steps=steps, temperature=0)
        assert torch.equal(got.tokens, want.tokens), (prompt_length, k, steps)
        drafted, accepted = drafted + got.drafted, accepted + got.accepted
    assert 0 < accepted < drafted  # both the accept and the reject paths ran


def test_nfe_counts_every_network_call_and_rows_finish_exactly():
    model = sharp_model(4, 0)
    calls = []
    handle = model.embedding.register_forward_pre_hook(lambda _, args: calls.append(1))
    try:
        result = speculative_generate(model, torch.zeros(5, 3, dtype=torch.long), 9, torch.Generator().manual_seed(1),
                                      draft_len=3, draft_steps=2)
    finally:
        handle.remove()
    assert result.nfe == len(calls) and result.tokens.shape == (5, 12)
    assert result.row_rounds >= 5 * 9 / 4 and 1 <= result.tokens_per_round <= 4


def test_a_round_is_one_draft_and_one_scoring_scan():
    """The scoring scan's per-token states replace the rescan of rows that rejected part of a draft."""
    model = sharp_model(4, 0)
    result = speculative_generate(model, torch.zeros(5, 3, dtype=torch.long), 9, torch.Generator().manual_seed(1),
                                  draft_len=3)
    assert result.accepted < result.drafted  # rejections happened, and still no rescans:
    # prompt prefill, then a draft and a score per round (none drafted when every row needs one token)
    assert result.nfe in (2 * result.steps, 2 * result.steps + 1)


def test_attention_trunks_are_refused_with_one_line():
    """A KV cache cannot rewind rows by different amounts: a hybrid checkpoint gets a UserError."""
    model = tiny_model(vocab_size=4, seed=0, layer_pattern="MA", attn_headdim=8)
    with pytest.raises(UserError, match="pure Mamba-3 trunk"):
        speculative_generate(model, torch.zeros(1, 2, dtype=torch.long), 4, torch.Generator(), draft_len=3)


def exact_joint(model, n, temperature=1.0, top_p=1.0):
    """AR's joint distribution over all V^n continuations of the prompt [0] (float64 [V^n])."""
    vocab = model.config.vocab_size
    seqs = torch.tensor(list(itertools.product(range(vocab), repeat=n)))
    with torch.no_grad():
        logits = model(torch.cat((torch.zeros(len(seqs), 1, dtype=torch.long), seqs), dim=1), mode="ar")
    probs = clean_distribution(logits[:, :-1], model.mask_token_id, temperature, 0, top_p)
    return probs.gather(-1, seqs[..., None]).squeeze(-1).prod(1)


def chi_square(model, n, samples, **knobs):
    joint = exact_joint(model, n, knobs.get("temperature", 1.0), knobs.get("top_p", 1.0))
    result = speculative_generate(model, torch.zeros(samples, 1, dtype=torch.long), n,
                                  torch.Generator().manual_seed(0), draft_len=2, **knobs)
    vocab = model.config.vocab_size
    index = (result.tokens[:, 1:] * vocab ** torch.arange(n - 1, -1, -1)).sum(1)
    counts = torch.bincount(index, minlength=vocab ** n).double()
    expected = joint * samples
    support = expected > 0
    assert counts[~support].sum() == 0, "a continuation AR gives probability 0 was sampled"
    return float(((counts - expected)[support] ** 2 / expected[support]).sum()), result


@pytest.mark.parametrize("knobs", [{}, {"temperature": 0.8, "top_p": 0.9}])
def test_sampled_continuations_follow_the_exact_ar_joint(knobs):
    model = sharp_model(4, 1)
    statistic, result = chi_square(model, 3, 3000, **knobs)
    assert statistic < CHI2_LIMIT
    assert 0.2 < result.acceptance_rate < 0.95  # drafts are both kept and rejected


def test_the_test_rejects_a_wrong_rule(monkeypatch):
    """Redrawing a rejected token from p instead of norm(max(0, p - q)) biases towards the draft."""
    monkeypatch.setattr(speculative, "_residual", lambda p, q: p)
    statistic, _ = chi_square(sharp_model(4, 1), 3, 3000)
    assert statistic > CHI2_LIMIT


def test_bad_draft_settings_are_user_errors():
    model = sharp_model(4, 0)
    prompt = torch.zeros(1, 1, dtype=torch.long)
    for bad in (0, MAX_DRAFT_LEN + 1):  # a round holds one state per draft token: bounded
        with pytest.raises(UserError, match=r"--draft-len must be in \[1, 64\]"):
            speculative_generate(model, prompt, 4, torch.Generator(), draft_len=bad)
    with pytest.raises(UserError, match="--draft-steps must be in"):
        speculative_generate(model, prompt, 4, torch.Generator(), draft_len=2, draft_steps=3)


@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_speculative_stops_at_eos_as_ar_does(seed):
    model = sharp_model(4, seed)
    prompt = torch.randint(0, 4, (4, 2), generator=torch.Generator().manual_seed(seed))
    stopped = 0
    for eos in range(4):
        want = ar_generate(model, prompt, 12, torch.Generator(), temperature=0, eos_id=eos)
        got = speculative_generate(model, prompt, 12, torch.Generator(), draft_len=3, temperature=0, eos_id=eos)
        width = want.tokens.shape[1]  # AR ends early once every row stopped; both pad with EOS after it
        assert torch.equal(got.tokens[:, :width], want.tokens), eos
        assert (got.tokens[:, width:] == eos).all()
        stopped += int((want.tokens[:, 2:] == eos).any(1).sum())
    assert stopped, "the test needs rows that stop early"


def test_acceptance_is_counted_per_draft_position():
    """d_i is judged only when every draft before it was kept: the rates are conditional, summed
    over rows and rounds, and batches merge by adding their counts."""
    result = speculative.SpeculativeResult(None, 0, 0)
    result.count_positions(torch.tensor([0, 2, 3]), 3)  # rows kept 0, 2 and all 3 drafts
    assert (result.reached, result.kept) == ([3, 2, 2], [2, 2, 1])
    assert result.acceptance_by_position == [2 / 3, 1.0, 0.5]
    result.count_positions(torch.tensor([1]), 1)  # a shorter last draft adds to position 0 only
    assert (result.reached, result.kept) == ([4, 2, 2], [3, 2, 1])
    total = speculative.SpeculativeResult(None, 0, 0)
    total.absorb(result)
    total.absorb(result)
    assert (total.reached, total.kept) == ([8, 4, 4], [6, 4, 2])
    assert speculative.format_acceptance_by_position(result.acceptance_by_position) == "75/100/50%"


def test_a_decode_counts_every_kept_draft_at_its_position():
    model = sharp_model(4, 0)
    result = speculative_generate(model, torch.zeros(5, 3, dtype=torch.long), 9, torch.Generator().manual_seed(1),
                                  draft_len=3)
    assert sum(result.kept) == result.accepted
    assert 0 < sum(result.reached) - sum(result.kept) <= result.reached[0]  # at most one rejection per round
    assert result.drafted / 3 <= result.reached[0] <= result.row_rounds  # rounds that drafted 1..3 tokens
    # position i + 1 is judged at most as often as position i was kept (less only in short last drafts)
    assert all(result.reached[i + 1] <= result.kept[i] for i in range(len(result.kept) - 1))
    assert all(0 <= kept <= reached for kept, reached in zip(result.kept, result.reached))
