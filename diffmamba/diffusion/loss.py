"""SUBS parameterisation and the continuous-time masked-diffusion NELBO (spec masked-diffusion.md §1.2-1.3).

    NELBO = E_t E_{x_t} [ -alpha'_t / (1 - alpha_t) * sum_{i: x_t^i = MASK} CE(x_theta^i(x_t), x_0^i) ]
          = E_t E_{x_t} [ (1 / t) * masked-token CE ]                       (log-linear schedule)

normalised by the number of **valid** tokens, masked or not. SUBS makes unmasked positions a
one-hot on the observed token, i.e. exactly zero loss, and forbids predicting ``[MASK]``: the loss
below therefore only ever evaluates the cross-entropy at masked positions, with the mask logit at
-inf, which is both exact and cheaper than materialising the full SUBS log-probabilities.

Training:   ``terms = diffusion_training_loss(model, tokens, objective_cfg, ...)``; ``terms.loss.backward()``
Evaluation: ``nll_sum, n = diffusion_nll(model, tokens, schedule, generator)``; bound = exp(sum / n)
Custom denoisers (block diffusion): ``masked_diffusion_nll(logits, x0, xt, t, schedule, mask_id)``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from diffmamba.diffusion.masking import cut_random_suffixes, eval_times, mask_tokens, stratified_times
from diffmamba.diffusion.schedule import NoiseSchedule, make_schedule


class LossTerms(NamedTuple):
    """loss = nll_sum / num_tokens. Keep the sum and count to normalise over many micro-batches."""

    loss: Tensor  # scalar float32, differentiable
    nll_sum: Tensor  # scalar float32, differentiable: sum over valid tokens of the weighted NLL
    num_tokens: Tensor  # scalar int64: valid tokens (masked or not)


def subs_log_probs(logits: Tensor, xt: Tensor, mask_id: int) -> Tensor:
    """The full SUBS output log x_theta(x_t) [B, L, V+1] (float32), for inspection and tests.

    Masked positions: log-softmax with the mask logit at -inf. Unmasked positions: 0 at the
    observed token and -inf elsewhere (carry-over).
    """
    logp = logits.float().clone()
    logp[..., mask_id] = float("-inf")
    logp = logp.log_softmax(-1)
    carry = torch.full_like(logp, float("-inf")).scatter_(-1, xt[..., None], 0.0)
    return torch.where((xt == mask_id)[..., None], logp, carry)


def _weighted_masked_ce(masked_logits: Tensor, targets: Tensor, weight: Tensor, mask_id: int) -> Tensor:
    """sum_i weight_i * CE(masked_logits_i, targets_i) over [n_masked] rows (float32 scalar)."""
    # SUBS rule 1: the mask is never a clean token (the model already does this; custom denoisers
    # and mocks may not). ``masked_logits`` comes from boolean indexing or the head, so it is a
    # fresh tensor whose backward does not need its values: the in-place fill is safe.
    masked_logits = masked_logits.float()
    masked_logits[:, mask_id] = float("-inf")
    ce = F.cross_entropy(masked_logits, targets, reduction="none")
    return (weight * ce).sum()


def masked_and_count(x0: Tensor, xt: Tensor, mask_id: int, valid_mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """The positions that carry loss (masked and valid) and the loss's denominator (valid tokens)."""
    masked = xt == mask_id
    if valid_mask is None:
        return masked, torch.tensor(x0.numel(), device=x0.device)
    return masked & valid_mask, valid_mask.sum()


def masked_diffusion_nll(
    logits: Tensor, x0: Tensor, xt: Tensor, t: Tensor, schedule: NoiseSchedule, mask_id: int,
    valid_mask: Optional[Tensor] = None,
) -> LossTerms:
    """Weighted NLL of the clean tokens at the masked positions of x_t.

    Args:
        logits: [B, L, V+1] denoiser output on xt (any float dtype; upcast to float32).
        x0: [B, L] clean ids. xt: [B, L] noisy ids (== mask_id where masked).
        t: [B] times in (0, 1]. valid_mask: [B, L] bool or None (= all valid).

    Returns:
        LossTerms; positions that are unmasked or invalid contribute exactly zero.
    """
    if logits.shape[:2] != x0.shape or xt.shape != x0.shape:
        raise ValueError(f"logits {tuple(logits.shape)}, x0 {tuple(x0.shape)} and xt {tuple(xt.shape)} "
                         "must agree on [B, L]")
    masked, num_tokens = masked_and_count(x0, xt, mask_id, valid_mask)
    weight = schedule.loss_weight(t.float())[:, None].expand_as(x0)[masked]  # [n_masked]
    nll_sum = _weighted_masked_ce(logits[masked], x0[masked], weight, mask_id)
    return LossTerms(nll_sum / num_tokens.clamp(min=1), nll_sum, num_tokens)


def diffusion_loss(
    model, x0: Tensor, t: Tensor, schedule: NoiseSchedule, generator: Optional[torch.Generator] = None,
    valid_mask: Optional[Tensor] = None,
) -> LossTerms:
    """Mask x0 at times t, run the model in diffusion mode, return the weighted NLL terms.

    When the model exposes its head (``model.logits(hidden)``, as ``DiffMamba`` does), the head
    runs only at the masked positions: unmasked ones carry no loss, and at a large vocabulary the
    head dominates the cost.

    Args:
        model: a ``DiffMamba``, or anything with ``model(tokens, mode="diffusion"[, valid_mask=])``
            returning [B, L, V+1] logits and a ``mask_token_id``.
        x0: [B, L] ids; t: [B]; generator: on x0's device (masking draws); valid_mask: [B, L] bool.
    """
    mask_id = model.mask_token_id
    xt, _ = mask_tokens(x0, t, schedule, mask_id, generator, valid_mask)
    kwargs = {} if valid_mask is None else {"valid_mask": valid_mask}
    head = getattr(model, "logits", None)
    if not callable(head):
        return masked_diffusion_nll(model(xt, mode="diffusion", **kwargs), x0, xt, t, schedule, mask_id, valid_mask)
    hidden = model(xt, mode="diffusion", return_hidden=True, **kwargs)
    masked, num_tokens = masked_and_count(x0, xt, mask_id, valid_mask)
    weight = schedule.loss_weight(t.float())[:, None].expand_as(x0)[masked]
    nll_sum = _weighted_masked_ce(head(hidden[masked]), x0[masked], weight, mask_id)
    return LossTerms(nll_sum / num_tokens.clamp(min=1), nll_sum, num_tokens)


def diffusion_training_loss(
    model, tokens: Tensor, objective, *, time_generator: torch.Generator,
    mask_generator: Optional[torch.Generator] = None, rank: int = 0, world_size: int = 1,
    accum_step: int = 0, num_accum_steps: int = 1, valid_mask: Optional[Tensor] = None,
) -> LossTerms:
    """One micro-batch of the training objective, driven by an ``ObjectiveConfig``.

    Applies variable-length cuts (``objective.var_length_prob``), draws times stratified over the
    global batch (``objective.antithetic``, ``objective.sampling_eps``), masks and scores.

    Args:
        tokens: [b, L] ids (b = this process's micro-batch).
        objective: ``diffmamba.config.ObjectiveConfig`` (uses schedule, eps, sampling_eps,
            antithetic, var_length_prob).
        time_generator: CPU generator seeded identically on every rank (see ``stratified_times``).
        mask_generator: generator on tokens' device for masking and length cuts; it should
            differ per rank (e.g. seeded with seed + rank); None uses the global RNG.
        rank, world_size, accum_step, num_accum_steps: where this micro-batch sits in the global batch.
        valid_mask: [b, L] bool or None.
    """
    schedule = make_schedule(objective.schedule, objective.eps)
    if objective.var_length_prob > 0:
        base = valid_mask if valid_mask is not None else torch.ones_like(tokens, dtype=torch.bool)
        valid_mask = cut_random_suffixes(base, objective.var_length_prob, mask_generator)
    t = stratified_times(tokens.shape[0], rank, world_size, accum_step, num_accum_steps, time_generator,
                         antithetic=objective.antithetic, sampling_eps=objective.sampling_eps,
                         device=tokens.device)
    return diffusion_loss(model, tokens, t, schedule, mask_generator, valid_mask)


@torch.no_grad()
def diffusion_nll(
    model, tokens: Tensor, schedule: NoiseSchedule, generator: torch.Generator, *,
    valid_mask: Optional[Tensor] = None, antithetic: bool = True, sampling_eps: float = 1e-3,
    num_time_samples: int = 1,
) -> tuple[Tensor, int]:
    """Stochastic NELBO estimate for evaluation: (sum of weighted NLL [float64 scalar], valid tokens).

    Accumulate both over a split; ``exp(total_sum / total_count)`` is the perplexity upper bound.
    One time per sequence, stratified over the batch when ``antithetic``; ``num_time_samples``
    repeats the estimate with fresh times and masks and averages (lower variance, same expectation).

    Args:
        tokens: [B, L]; generator: a seeded generator on tokens' device (seeded = reproducible);
        valid_mask: [B, L] bool or None.
    """
    if num_time_samples < 1:
        raise ValueError(f"num_time_samples must be >= 1, got {num_time_samples}")
    time_generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator,
                                                                    device=generator.device)))
    total = torch.zeros((), dtype=torch.float64, device=tokens.device)
    count = 0
    for _ in range(num_time_samples):
        t = eval_times(tokens.shape[0], time_generator, antithetic=antithetic, sampling_eps=sampling_eps,
                       device=tokens.device)
        terms = diffusion_loss(model, tokens, t, schedule, generator, valid_mask)
        total += terms.nll_sum.double()
        count = int(terms.num_tokens)
    return total / num_time_samples, count
