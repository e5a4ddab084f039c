"""Sampler invariants and laws, on a mock denoiser (docs/masked-diffusion.md §2)."""
import pytest
import torch
from diffusion_mocks import CountingDenoiser

from diffmamba.sampling import categorical
from diffmamba.sampling.base import SamplingError, prepare_canvas
from diffmamba.sampling.registry import SAMPLERS, SamplerOptions, get_sampler, run_sampler
from diffmamba.core.errors import UserError

V, L, B, MASK = 9, 16, 3, 9


def infill_canvas():
    """A prompt prefix plus scattered fixed positions (infilling), different per row."""
    canvas = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(11))
    fixed = torch.zeros(B, L, dtype=torch.bool)
    fixed[:, :3] = True
    fixed[0, 8] = fixed[1, 12] = fixed[2, [5, 6, 15]] = True
    return canvas, fixed


def run(name, seed=0, options=None, denoiser=None):
    canvas, fixed = infill_canvas()
    denoiser = denoiser or CountingDenoiser(V, L)
    options = options or SamplerOptions(steps=24, block_length=5, eta=0.05)
    result = run_sampler(name, denoiser, canvas, fixed, MASK, options, torch.Generator().manual_seed(seed))
    return result, denoiser, canvas, fixed


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_invariants_fixed_kept_no_masks_nfe_counted_seeded(name):
    result, denoiser, canvas, fixed = run(name)
    assert result.tokens.shape == (B, L) and result.tokens.dtype == torch.long
    assert torch.equal(result.tokens[fixed], canvas[fixed]), "a fixed token changed"
    assert not (result.tokens == MASK).any(), "masks left at the end"
    assert ((result.tokens >= 0) & (result.tokens < V)).all()
    assert result.nfe == denoiser.calls >= 1
    again, _, _, _ = run(name)
    assert torch.equal(again.tokens, result.tokens) and again.nfe == result.nfe
    other, _, _, _ = run(name, seed=1)
    assert not torch.equal(other.tokens, result.tokens), "the seed has no effect"


@pytest.mark.parametrize("name", [n for n in SAMPLERS if n != "remdm-cap"])
def test_committed_tokens_are_never_changed(name):
    denoiser = CountingDenoiser(V, L, record=True)
    result, _, _, _ = run(name, denoiser=denoiser)
    states = denoiser.inputs + [result.tokens]
    for before, after in zip(states, states[1:]):
        decided = before != MASK
        assert torch.equal(after[decided], before[decided])


def test_cached_ancestral_equals_uncached_with_fewer_calls():
    options = SamplerOptions(steps=64, top_p=0.9, temperature=0.8)  # steps >> generated tokens
    cached, _, _, _ = run("ancestral", seed=3, options=options)
    uncached, _, _, _ = run("ancestral-nocache", seed=3, options=options)
    assert torch.equal(cached.tokens, uncached.tokens)
    assert cached.nfe < uncached.nfe
    generated = int((~infill_canvas()[1]).sum(1).max())
    assert cached.nfe <= B * generated + 1


def test_ancestral_unmask_rate_follows_the_schedule():
    # Two steps on the grid 1 -> 0.5 -> eps: the first unmasks with probability
    # (alpha_s - alpha_t) / (1 - alpha_t) = 1 - s = 0.5 (log-linear), whatever top-p says, because
    # nucleus filtering acts on the clean distribution only, never on the stay-masked mass.
    canvas = torch.zeros(8, 512, dtype=torch.long)
    seen = {}
    for top_p in (1.0, 0.05):
        denoiser = CountingDenoiser(V, 512, record=True)
        options = SamplerOptions(steps=2, time_eps=1e-9, top_p=top_p)
        get_sampler("ancestral-nocache")(denoiser, canvas, None, MASK, options, torch.Generator().manual_seed(0))
        seen[top_p] = denoiser.inputs[1] == MASK
    assert seen[1.0].float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(seen[1.0], seen[0.05])


def test_remdm_with_eta_zero_is_mdlm_and_positive_eta_remasks():
    options = dict(steps=40, top_p=0.95)
    mdlm, _, _, _ = run("ancestral", seed=5, options=SamplerOptions(**options))
    remdm0, _, _, _ = run("remdm-cap", seed=5, options=SamplerOptions(eta=0.0, **options))
    assert torch.equal(mdlm.tokens, remdm0.tokens) and mdlm.nfe == remdm0.nfe
    denoiser = CountingDenoiser(V, L, record=True)
    run("remdm-cap", options=SamplerOptions(steps=80, eta=0.2), denoiser=denoiser)
    remasked = [((a != MASK) & (b == MASK)).any() for a, b in zip(denoiser.inputs, denoiser.inputs[1:])]
    assert any(remasked), "no decoded token was ever remasked"


def test_first_hitting_unmasks_exactly_one_token_per_row_and_step():
    denoiser = CountingDenoiser(V, L, record=True)
    result, _, _, fixed = run("first-hitting", denoiser=denoiser)
    generated = (~fixed).sum(1)
    assert result.nfe == result.steps == int(generated.max())
    masks = torch.stack([(x == MASK).sum(1) for x in denoiser.inputs + [result.tokens]])  # [steps+1, B]
    expected = (generated[None] - torch.arange(len(masks))[:, None]).clamp(min=0)
    assert torch.equal(masks, expected)


def test_confidence_budget_blocks_and_most_confident_first():
    denoiser = CountingDenoiser(V, L, record=True)
    canvas = torch.zeros(1, L, dtype=torch.long)
    fixed = torch.zeros(1, L, dtype=torch.bool)
    fixed[0, :3] = True  # generation starts at column 3: blocks [3, 8), [8, 13), [13, 16)
    options = SamplerOptions(steps=7, block_length=5, temperature=0)
    result = get_sampler("confidence")(denoiser, canvas, fixed, MASK, options, torch.Generator().manual_seed(0))
    # Steps 3 + 2 + 2 for the three blocks; masks 5, 5, 3 -> budgets [2, 2, 1], [3, 2], [2, 1].
    assert result.steps == 7 and result.nfe == 7
    states = denoiser.inputs + [result.tokens]
    commits = [int((a == MASK).sum() - (b == MASK).sum()) for a, b in zip(states, states[1:])]
    assert commits == [2, 2, 1, 3, 2, 2, 1]
    for x in denoiser.inputs[:3]:
        assert (x[0, 8:] == MASK).all(), "a later block was touched before the current one finished"
    # Greedy first step: the two committed positions are the two most confident masked ones.
    probs = denoiser(denoiser.inputs[0])[0, 3:8].softmax(-1)
    top2 = set((probs.max(-1).values.argsort(descending=True)[:2] + 3).tolist())
    committed = set((denoiser.inputs[1][0] != MASK).nonzero().flatten().tolist()) - {0, 1, 2}
    assert committed == top2


def test_confidence_skips_calls_when_the_budget_is_empty():
    canvas = torch.zeros(1, L, dtype=torch.long)
    fixed = torch.ones(1, L, dtype=torch.bool)
    fixed[0, [4, 9]] = False
    denoiser = CountingDenoiser(V, L)
    result = get_sampler("confidence")(denoiser, canvas, fixed, MASK, SamplerOptions(steps=50),
                                       torch.Generator().manual_seed(0))
    assert result.nfe == denoiser.calls == 2 and not (result.tokens == MASK).any()
    with pytest.raises(SamplingError, match="--steps"):
        get_sampler("confidence")(denoiser, torch.zeros(1, L, dtype=torch.long), None, MASK,
                                  SamplerOptions(steps=2, block_length=4), torch.Generator())


def test_greedy_noise_removal_fills_the_argmax():
    # One step from t = 1 to s = 0.999 unmasks almost nothing; noise removal argmax-fills the rest.
    denoiser = CountingDenoiser(V, L)
    canvas = torch.zeros(2, L, dtype=torch.long)
    options = SamplerOptions(steps=1, time_eps=0.999)
    result = get_sampler("ancestral-nocache")(denoiser, canvas, None, MASK, options, torch.Generator().manual_seed(0))
    assert result.nfe == 2 and not (result.tokens == MASK).any()
    last_input = torch.full_like(canvas, MASK)
    assert torch.equal(result.tokens, denoiser(last_input)[..., :V].argmax(-1))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_gumbel_noise_is_float64_at_the_argmax(name, monkeypatch):
    seen = []

    def spy(scores):
        seen.append(scores.dtype)
        return scores.argmax(-1)

    monkeypatch.setattr(categorical, "_argmax_last", spy)
    run(name, options=SamplerOptions(steps=12, block_length=5, top_p=0.9, eta=0.05))
    run(name, options=SamplerOptions(steps=12, block_length=5, eta=0.05))
    assert seen and all(dtype == torch.float64 for dtype in seen)


def test_bad_arguments_raise_user_errors_naming_the_fix():
    with pytest.raises(UserError, match="unknown sampler 'nope'; choose one of: ancestral, "):
        get_sampler("nope")
    with pytest.raises(UserError, match="steps must be >= 1"):
        SamplerOptions(steps=0)
    for bad in (0.0, 1.5):
        with pytest.raises(UserError, match="top_p must be in"):
            SamplerOptions(top_p=bad)
    with pytest.raises(ValueError, match="fixed position holds the mask id"):
        prepare_canvas(torch.full((1, 4), MASK), torch.ones(1, 4, dtype=torch.bool), MASK)
