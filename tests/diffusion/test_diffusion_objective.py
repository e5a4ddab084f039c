"""Schedules, time sampling, masking and the SUBS NELBO (docs/masked-diffusion.md §1)."""
import math

import pytest
import torch
from diffusion_mocks import TinyDiffusionModel, TinyDiffusionModelWithHead

from diffmamba.config import ObjectiveConfig
from diffmamba.objectives.mdlm import (
    diffusion_loss, diffusion_nll, diffusion_training_loss, masked_diffusion_nll, subs_log_probs,
)
from diffmamba.objectives.masking import cut_random_suffixes, mask_tokens, stratified_times
from diffmamba.objectives.schedule import CosineSchedule, LogLinearSchedule, make_schedule

T_GRID = torch.tensor([1e-3, 0.01, 0.2, 0.5, 0.77, 1.0], dtype=torch.float64)


@pytest.mark.parametrize("name", ["loglinear", "cosine"])
def test_schedule_endpoints_weight_and_inverse(name):
    schedule = make_schedule(name, eps=1e-3)
    assert schedule.alpha(torch.tensor(0.0, dtype=torch.float64)) == pytest.approx(1.0)
    assert schedule.alpha(torch.tensor(1.0, dtype=torch.float64)) == pytest.approx(1e-3)
    alpha = schedule.alpha(T_GRID)
    assert (alpha[1:] < alpha[:-1]).all(), "alpha must fall monotonically"
    # The specialised weight equals the generic -alpha' / (1 - alpha).
    generic = -schedule.alpha_prime(T_GRID) / (1 - schedule.alpha(T_GRID))
    torch.testing.assert_close(schedule.loss_weight(T_GRID), generic, rtol=1e-10, atol=0)
    torch.testing.assert_close(schedule.time_for_mask_prob(schedule.mask_prob(T_GRID)), T_GRID)


def test_loglinear_weight_is_one_over_t_and_alpha_prime_matches_finite_difference():
    schedule = LogLinearSchedule(eps=1e-3)
    assert torch.equal(schedule.loss_weight(T_GRID), 1 / T_GRID)
    for sched in (schedule, CosineSchedule(1e-3)):
        t, h = torch.tensor([0.3, 0.6], dtype=torch.float64), 1e-6
        fd = (sched.alpha(t + h) - sched.alpha(t - h)) / (2 * h)
        torch.testing.assert_close(sched.alpha_prime(t), fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("world_size,num_accum,local_batch", [(1, 1, 8), (2, 3, 4), (4, 2, 1)])
def test_strata_tile_unit_interval_once_per_global_batch(world_size, num_accum, local_batch):
    sampling_eps = 1e-3
    n = world_size * num_accum * local_batch
    # Every rank holds its own generator, seeded identically (as the training loop does).
    generators = [torch.Generator().manual_seed(123) for _ in range(world_size)]
    for optimizer_step in range(2):
        times = []
        for rank in range(world_size):
            for accum in range(num_accum):
                times.append(stratified_times(local_batch, rank, world_size, accum, num_accum, generators[rank],
                                              sampling_eps=sampling_eps))
        u = (torch.cat(times).double() - sampling_eps) / (1 - sampling_eps)
        strata = torch.floor(u * n).long().sort().values
        assert torch.equal(strata, torch.arange(n)), f"step {optimizer_step}: strata {strata.tolist()}"
        if optimizer_step == 0:
            first = torch.cat(times)
    assert not torch.equal(first, torch.cat(times)), "the generator must advance between optimizer steps"


def test_plain_uniform_times_differ_across_ranks():
    times = [stratified_times(4, rank, 2, 0, 1, torch.Generator().manual_seed(5), antithetic=False)
             for rank in range(2)]
    assert not torch.equal(times[0], times[1])
    assert all(((t >= 1e-3) & (t < 1)).all() for t in times)


def test_masking_rate_follows_schedule_and_respects_padding():
    schedule = LogLinearSchedule(1e-3)
    x0 = torch.randint(0, 7, (4, 4000), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.1, 0.4, 0.7, 1.0])
    valid = torch.ones_like(x0, dtype=torch.bool)
    valid[:, 3000:] = False
    xt, masked = mask_tokens(x0, t, schedule, 7, torch.Generator().manual_seed(1), valid)
    assert torch.equal(masked, xt == 7) and not masked[:, 3000:].any()
    assert torch.equal(xt[~masked], x0[~masked])
    rate = masked[:, :3000].float().mean(1)
    torch.testing.assert_close(rate, schedule.mask_prob(t), atol=0.03, rtol=0)


def test_loss_equals_hand_computed_value():
    # V = 3 clean tokens + mask id 3; one sequence of length 3, positions 0 and 2 masked, t = 0.25.
    logits = torch.tensor([[[1.0, 2.0, 0.5, 9.0], [0.0, 0.0, 0.0, 9.0], [3.0, -1.0, 1.0, 9.0]]])
    x0 = torch.tensor([[1, 2, 0]])
    xt = torch.tensor([[3, 2, 3]])
    t = torch.tensor([0.25])
    # The mask logit (9.0 here) must be ignored: SUBS gives it -inf.
    ce0 = -(2.0 - math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.5)))
    ce2 = -(3.0 - math.log(math.exp(3.0) + math.exp(-1.0) + math.exp(1.0)))
    expected_sum = (1 / 0.25) * (ce0 + ce2)
    terms = masked_diffusion_nll(logits, x0, xt, t, LogLinearSchedule(1e-3), 3)
    assert terms.nll_sum.item() == pytest.approx(expected_sum, rel=1e-6)
    assert int(terms.num_tokens) == 3, "normalised by ALL valid tokens, masked or not"
    assert terms.loss.item() == pytest.approx(expected_sum / 3, rel=1e-6)


def test_unmasked_positions_contribute_exactly_zero():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 5, generator=g, requires_grad=True)
    x0 = torch.randint(0, 4, (2, 6), generator=g)
    xt = x0.clone()
    xt[:, ::2] = 4
    t = torch.tensor([0.3, 0.9])
    terms = masked_diffusion_nll(logits, x0, xt, t, LogLinearSchedule(1e-3), 4)
    terms.loss.backward()
    unmasked = xt != 4
    assert torch.count_nonzero(logits.grad[unmasked]) == 0
    assert torch.count_nonzero(logits.grad[~unmasked]) > 0
    # Changing the logits at unmasked positions leaves the loss bit-identical.
    perturbed = logits.detach().clone()
    perturbed[unmasked] += 100 * torch.randn_like(perturbed[unmasked])
    again = masked_diffusion_nll(perturbed, x0, xt, t, LogLinearSchedule(1e-3), 4)
    assert again.nll_sum.item() == terms.nll_sum.item()
    # The full SUBS output: carry-over one-hot (log 1 = 0) at unmasked, mask never predicted.
    logp = subs_log_probs(logits.detach(), xt, 4)
    assert (logp[..., 4] == float("-inf")).all()
    assert (logp[unmasked].exp().gather(-1, xt[unmasked][:, None]) == 1).all()
    torch.testing.assert_close(logp[~unmasked].exp().sum(-1), torch.ones(int((~unmasked).sum())))


def test_padding_is_excluded_from_loss_and_count():
    model = TinyDiffusionModel()
    x0 = torch.randint(0, 7, (3, 10), generator=torch.Generator().manual_seed(0))
    valid = torch.ones_like(x0, dtype=torch.bool)
    valid[0, 6:] = False
    terms = diffusion_loss(model, x0, torch.full((3,), 1.0), LogLinearSchedule(0.0),
                           torch.Generator().manual_seed(0), valid)
    assert int(terms.num_tokens) == 26
    assert model.seen_valid_masks[-1] is valid, "the valid mask must reach the model"


def test_head_only_at_masked_positions_matches_full_logits():
    x0 = torch.randint(0, 7, (3, 12), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.2, 0.5, 0.9])
    full = diffusion_loss(TinyDiffusionModel(seed=3), x0, t, LogLinearSchedule(), torch.Generator().manual_seed(4))
    headed_model = TinyDiffusionModelWithHead(seed=3)
    headed = diffusion_loss(headed_model, x0, t, LogLinearSchedule(), torch.Generator().manual_seed(4))
    torch.testing.assert_close(headed.nll_sum, full.nll_sum)
    headed.loss.backward()
    assert headed_model.out.weight.grad is not None


def test_variable_length_cuts_only_suffixes():
    valid = torch.ones(200, 16, dtype=torch.bool)
    valid[0, 10:] = False
    cut = cut_random_suffixes(valid, 0.5, torch.Generator().manual_seed(0))
    assert not (cut & ~valid).any(), "never re-validates padding"
    lengths = cut.sum(1)
    assert torch.equal(cut, torch.arange(16)[None] < lengths[:, None]), "valid part stays a prefix"
    assert (lengths >= 1).all()
    changed = (cut != valid).any(1).float().mean().item()
    assert 0.3 < changed < 0.6  # about prob * (1 - 1/L) of the rows get shorter
    assert torch.equal(cut_random_suffixes(valid, 0.0), valid)


def test_training_loss_from_objective_config():
    model = TinyDiffusionModel()
    tokens = torch.randint(0, 7, (4, 9), generator=torch.Generator().manual_seed(0))
    objective = ObjectiveConfig(var_length_prob=1.0)
    terms = diffusion_training_loss(model, tokens, objective, time_generator=torch.Generator().manual_seed(0),
                                    mask_generator=torch.Generator().manual_seed(1), rank=1, world_size=2,
                                    accum_step=0, num_accum_steps=2)
    terms.loss.backward()
    valid = model.seen_valid_masks[-1]
    assert valid is not None and int(terms.num_tokens) == int(valid.sum()) < tokens.numel()
    assert torch.isfinite(terms.loss)


def test_eval_nll_is_seeded_and_matches_the_uniform_model_expectation():
    # A denoiser that predicts the uniform distribution over V clean tokens has per-token
    # NELBO E_t[(1/t) P(masked | t)] log V = (1 - eps) log V for the log-linear schedule.
    vocab = 11

    class Uniform(torch.nn.Module):
        mask_token_id = vocab

        def forward(self, tokens, mode="diffusion", valid_mask=None):
            logits = torch.zeros(*tokens.shape, vocab + 1)
            logits[..., vocab] = float("-inf")
            return logits

    tokens = torch.randint(0, vocab, (64, 64), generator=torch.Generator().manual_seed(0))
    schedule = LogLinearSchedule(1e-3)
    total, count = diffusion_nll(Uniform(), tokens, schedule, torch.Generator().manual_seed(7))
    again, _ = diffusion_nll(Uniform(), tokens, schedule, torch.Generator().manual_seed(7))
    assert total.dtype == torch.float64 and total.item() == again.item() and count == tokens.numel()
    assert total.item() / count == pytest.approx((1 - 1e-3) * math.log(vocab), rel=0.03)
    averaged, _ = diffusion_nll(Uniform(), tokens, schedule, torch.Generator().manual_seed(7), num_time_samples=3)
    assert averaged.item() / count == pytest.approx((1 - 1e-3) * math.log(vocab), rel=0.03)
