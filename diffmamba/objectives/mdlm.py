"""SUBS parameterisation and the continuous-time masked-diffusion NELBO (docs/masked-diffusion.md §1.2-1.3).

    NELBO = E_t E_{x_t} [ -alpha'_t / (1 - alpha_t) * sum_{i: x_t^i = MASK} CE(x_theta^i(x_t), x_0^i) ]
          = E_t E_{x_t} [ (1 / t) * masked-token CE ]                       (log-linear schedule)

normalised by the number of **valid** tokens, masked or not. SUBS makes unmasked positions a
one-hot on the observed token, i.e. exactly zero loss, and forbids predicting ``[MASK]``: the loss
below therefore only ever evaluates the cross-entropy at masked positions, with the mask logit at
-inf, which is both exact and cheaper than materialising the full SUBS log-probabilities.

Training:   ``terms = diffusion_training_loss(model, tokens, objective_cfg, ...)``; ``terms.loss.backward()``
Evaluation: ``nll_sum, n = diffusion_nll(model, tokens, schedule, generator)``; bound = exp(sum / n)
Custom denoisers: ``masked_diffusion_nll(logits, x0, xt, t, schedule, mask_id)``.
Block diffusion (``bd3lm``) is this objective with one time per block instead of per sequence; it
shares ``score_masked`` / ``score_hidden`` (the weighted CE at masked positions), ``training_times``
(length cuts and global-batch strata) and ``nelbo_estimate`` (the seeded evaluation loop) with the
plain one; the dual objective (``dual``) scores its noisy stream with ``score_hidden`` too.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffmamba.config import ObjectiveConfig
from diffmamba.objectives.base import NLL, MicroBatch, as_nll, masked_diffusion_train
from diffmamba.objectives.masking import cut_random_suffixes, eval_times, mask_tokens, stratified_times
from diffmamba.objectives.schedule import NoiseSchedule, make_schedule


class LossTerms(NamedTuple):
    """loss = nll_sum / num_tokens. Keep the sum and count to normalise over many micro-batches."""

    loss: Tensor  # scalar float32 (float64 for a float64 model), differentiable
    nll_sum: Tensor  # scalar, differentiable: sum over valid tokens of the weighted NLL
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
    """sum_i weight_i * CE(masked_logits_i, targets_i) over [n_masked] rows (float32 scalar; float64 for float64 logits)."""
    # SUBS rule 1: the mask is never a clean token (the model already does this; custom denoisers
    # and mocks may not). ``masked_logits`` comes from boolean indexing or the head, so it is a
    # fresh tensor whose backward does not need its values: the in-place fill is safe.
    if masked_logits.dtype != torch.float64:  # float64 (a testing dtype) stays exact
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


def score_masked(model, x0: Tensor, xt: Tensor, token_weight: Tensor, valid_mask: Optional[Tensor] = None,
                 inputs: Optional[Tensor] = None, **forward) -> LossTerms:
    """Run the denoiser and return the weighted CE of x0 at the masked positions of xt.

    Args:
        model: a ``DiffMamba``, or anything with ``model(tokens, mode="diffusion"[, valid_mask=])``
            returning [B, L, V+1] logits and a ``mask_token_id``. When it exposes its head
            (``model.logits(hidden)``), the head runs only at the masked positions: unmasked ones
            carry no loss (SUBS carry-over), and at a large vocabulary the head dominates the cost.
        token_weight: [B, L] NELBO weight of each position (read at masked positions only).
        inputs: what the model is called on (default xt); ``forward``: extra model arguments
            (block diffusion passes the clean tokens as inputs and ``block_size``, ``noisy=xt``).
    """
    kwargs = dict(forward) if valid_mask is None else dict(forward, valid_mask=valid_mask)
    inputs = xt if inputs is None else inputs
    if callable(getattr(model, "logits", None)):
        hidden = model(inputs, mode="diffusion", return_hidden=True, **kwargs)
        return score_hidden(model, hidden, x0, xt, token_weight, valid_mask)
    masked, num_tokens = masked_and_count(x0, xt, model.mask_token_id, valid_mask)
    logits = model(inputs, mode="diffusion", **kwargs)[masked]
    nll_sum = _weighted_masked_ce(logits, x0[masked], token_weight[masked], model.mask_token_id)
    return LossTerms(nll_sum / num_tokens.clamp(min=1), nll_sum, num_tokens)


def score_hidden(model, hidden: Tensor, x0: Tensor, xt: Tensor, token_weight: Tensor,
                 valid_mask: Optional[Tensor] = None) -> LossTerms:
    """``score_masked`` from a denoiser output already computed: ``hidden`` [B, L, D] after the final
    norm, the head (``model.logits``) run at the masked positions only. For forwards that return
    more than the denoiser's output (the dual objective's (noisy, AR) streams)."""
    masked, num_tokens = masked_and_count(x0, xt, model.mask_token_id, valid_mask)
    nll_sum = _weighted_masked_ce(model.logits(hidden[masked]), x0[masked], token_weight[masked],
                                  model.mask_token_id)
    return LossTerms(nll_sum / num_tokens.clamp(min=1), nll_sum, num_tokens)


def diffusion_loss(
    model, x0: Tensor, t: Tensor, schedule: NoiseSchedule, generator: Optional[torch.Generator] = None,
    valid_mask: Optional[Tensor] = None,
) -> LossTerms:
    """Mask x0 at times t, run the model in diffusion mode, return the weighted NLL terms.

    Args:
        model: as ``score_masked``.
        x0: [B, L] ids; t: [B]; generator: on x0's device (masking draws); valid_mask: [B, L] bool.
    """
    xt, _ = mask_tokens(x0, t, schedule, model.mask_token_id, generator, valid_mask)
    weight = schedule.loss_weight(t.float())[:, None].expand_as(x0)
    return score_masked(model, x0, xt, weight, valid_mask)


def training_times(
    tokens: Tensor, objective, draws_per_row: int, *, time_generator: torch.Generator,
    mask_generator: Optional[torch.Generator], rank: int, world_size: int, accum_step: int,
    num_accum_steps: int, valid_mask: Optional[Tensor],
) -> tuple[Tensor, Optional[Tensor]]:
    """Variable-length cuts (``objective.var_length_prob``), then ``draws_per_row`` times per row
    stratified over the global batch (``objective.antithetic``, ``objective.sampling_eps``), so
    strata never repeat across ranks or accumulation steps. Returns (t [b * draws_per_row], valid_mask)."""
    if objective.var_length_prob > 0:
        base = valid_mask if valid_mask is not None else torch.ones_like(tokens, dtype=torch.bool)
        valid_mask = cut_random_suffixes(base, objective.var_length_prob, mask_generator)
    t = stratified_times(tokens.shape[0] * draws_per_row, rank, world_size, accum_step, num_accum_steps,
                         time_generator, antithetic=objective.antithetic, sampling_eps=objective.sampling_eps,
                         device=tokens.device)
    return t, valid_mask


def diffusion_training_loss(
    model, tokens: Tensor, objective, *, time_generator: torch.Generator,
    mask_generator: Optional[torch.Generator] = None, rank: int = 0, world_size: int = 1,
    accum_step: int = 0, num_accum_steps: int = 1, valid_mask: Optional[Tensor] = None,
) -> LossTerms:
    """One micro-batch of the training objective, driven by an ``ObjectiveConfig``.

    Applies variable-length cuts, draws times stratified over the global batch, masks and scores
    (``training_times``).

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
    t, valid_mask = training_times(tokens, objective, 1, time_generator=time_generator,
                                   mask_generator=mask_generator, rank=rank, world_size=world_size,
                                   accum_step=accum_step, num_accum_steps=num_accum_steps, valid_mask=valid_mask)
    return diffusion_loss(model, tokens, t, make_schedule(objective.schedule, objective.eps), mask_generator,
                          valid_mask)


def nelbo_estimate(loss_at: Callable[[Tensor], LossTerms], num_times: int, generator: torch.Generator, *,
                   antithetic: bool, sampling_eps: float, num_time_samples: int,
                   device: torch.device) -> tuple[Tensor, int]:
    """The seeded evaluation loop: ``num_time_samples`` rounds of ``num_times`` evaluation times
    (stratified when ``antithetic``), each scored by ``loss_at(t)``; returns (mean summed NLL
    [float64 scalar], valid tokens). Deterministic given ``generator``."""
    if num_time_samples < 1:
        raise ValueError(f"num_time_samples must be >= 1, got {num_time_samples}")
    time_generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator,
                                                                    device=generator.device)))
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for _ in range(num_time_samples):
        t = eval_times(num_times, time_generator, antithetic=antithetic, sampling_eps=sampling_eps,
                       device=device)
        terms = loss_at(t)
        total += terms.nll_sum.double()
        count = int(terms.num_tokens)
    return total / num_time_samples, count


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
    return nelbo_estimate(lambda t: diffusion_loss(model, tokens, t, schedule, generator, valid_mask),
                          tokens.shape[0], generator, antithetic=antithetic, sampling_eps=sampling_eps,
                          num_time_samples=num_time_samples, device=tokens.device)


# ------------------------------------------------------------------------------------------ objective


def diffusion_train(model: nn.Module, batch: MicroBatch, objective: ObjectiveConfig) -> NLL:
    return masked_diffusion_train(diffusion_training_loss, model, batch, objective)


def diffusion_eval(model: nn.Module, tokens: Tensor, valid: Optional[Tensor], generator: torch.Generator,
                   objective: ObjectiveConfig) -> NLL:
    """The NELBO bound per token (antithetic times over the batch, as MDLM's validation)."""
    total, count = diffusion_nll(model, tokens, make_schedule(objective.schedule, objective.eps), generator,
                                 valid_mask=valid, antithetic=objective.antithetic,
                                 sampling_eps=objective.sampling_eps)
    return as_nll(total, count, tokens.device)


def diffusion_times(batch: MicroBatch, objective: ObjectiveConfig) -> Tensor:
    """The times ``diffusion_train`` draws for this micro-batch (a replay of the same generator
    state; used by the debug log that checks the strata of the global batch)."""
    replay = torch.Generator().set_state(batch.time_generator.get_state())
    return stratified_times(batch.tokens.shape[0], batch.rank, batch.world_size, batch.accum_step,
                            batch.num_accum_steps, replay, antithetic=objective.antithetic,
                            sampling_eps=objective.sampling_eps)
