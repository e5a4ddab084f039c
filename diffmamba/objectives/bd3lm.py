"""Block-diffusion NELBO (docs/block-diffusion.md §2, docs/masked-diffusion.md §1.3-1.4, §4.2).

    -log p(x) = sum_b -log p(x^b | x^{<b})
             <= sum_b E_{t_b} E_{x_t^b} [ w(t_b) sum_{i in b, masked} CE(x_theta^i(x_t^b; x^{<b}), x_0^i) ]

with w(t) = -alpha'(t) / (1 - alpha(t)) (1 / t for log-linear), one time per block, the times
stratified jointly over (global batch x blocks) as BD3-LM does, and the sum normalised by the
number of valid tokens. The denoiser of block b is the noisy stream of ``block_streams``: it sees
x_t^b and, through the forward-scan states, the clean prefix x^{<b}.

L' = 1 is special-cased to its exact value: a one-token block has one noisy state that carries
information (the masked token), and with no time conditioning its logits do not depend on t, so
the NELBO integrand is constant and the term is exactly CE(x_theta(MASK; x^{<i}), x_0^i) — the
next-token NLL (BD3-LM's t ~ U[1, 1]). That term is computed directly: every token masked, weight 1.

The masking, scoring, time strata and evaluation loop are plain diffusion's (``mdlm``), with one
time per block instead of one per sequence.

Training:   ``block_diffusion_training_loss(model, tokens, objective, time_generator=..., ...)``
Evaluation: ``block_diffusion_nll(model, tokens, block_size, schedule, generator)``
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from diffmamba.config import ObjectiveConfig
from diffmamba.modules.two_stream import check_block_size
from diffmamba.objectives.base import NLL, MicroBatch, as_nll, masked_diffusion_train
from diffmamba.objectives.masking import mask_tokens
from diffmamba.objectives.mdlm import LossTerms, nelbo_estimate, score_hidden, score_masked, training_times
from diffmamba.objectives.schedule import NoiseSchedule, make_schedule


def mask_blocks(x0: Tensor, t: Tensor, block_size: int, schedule: NoiseSchedule, mask_id: int,
                generator: Optional[torch.Generator] = None, valid_mask: Optional[Tensor] = None) -> Tensor:
    """x_t ~ q(x_t | x_0) with one time per block: x0 [B, T], t [B, T / L'] -> x_t [B, T].

    L' = 1 masks every valid token (the exact one-token term, module docstring). Otherwise
    ``mask_tokens`` with each token at its block's time, so one block per row is plain diffusion
    masking exactly.
    """
    if block_size == 1:
        masked = torch.ones_like(x0, dtype=torch.bool) if valid_mask is None else valid_mask
        return torch.where(masked, torch.full_like(x0, mask_id), x0)
    return mask_tokens(x0, t.repeat_interleave(block_size, dim=1), schedule, mask_id, generator, valid_mask)[0]


def block_diffusion_loss(model, x0: Tensor, t: Tensor, block_size: int, schedule: NoiseSchedule,
                         generator: Optional[torch.Generator] = None,
                         valid_mask: Optional[Tensor] = None, ar_prefix: bool = False) -> LossTerms:
    """Mask each block of x0 at its time, run both streams, return the weighted NLL terms.

    Args:
        model: a ``DiffMamba`` (or a wrapper forwarding ``block_size`` / ``noisy`` to it and
            exposing ``mask_token_id`` and ``logits``).
        x0: [B, T] ids; t: [B, T / block_size] block times in (0, 1] (ignored for L' = 1);
        generator: masking draws, on x0's device; valid_mask: [B, T] bool or None.
        ar_prefix: blocks conditioned on the AR stream's states (a ``dual`` model, ``objectives.dual``).

    Returns:
        LossTerms (nll_sum over valid tokens; num_tokens = valid tokens, masked or not).
    """
    num_blocks = check_block_size(x0.shape[1], block_size)
    if t.shape != (x0.shape[0], num_blocks):
        raise ValueError(f"t must have shape [B, T / block_size] = {[x0.shape[0], num_blocks]}, got {list(t.shape)}")
    xt = mask_blocks(x0, t, block_size, schedule, model.mask_token_id, generator, valid_mask)
    if ar_prefix:  # the dual forward returns (noisy, AR) outputs; only the noisy one is scored here
        kwargs = {} if valid_mask is None else {"valid_mask": valid_mask}
        hidden, _ = model(x0, mode="ar", block_size=block_size, noisy=xt, return_hidden=True, **kwargs)
        return block_masked_nll(model, hidden, x0, xt, t, block_size, schedule, valid_mask)
    return score_masked(model, x0, xt, block_weights(t, block_size, schedule, x0), valid_mask, inputs=x0,
                        block_size=block_size, noisy=xt)


def block_weights(t: Tensor, block_size: int, schedule: NoiseSchedule, x0: Tensor) -> Tensor:
    """[B, T] NELBO weight of each token: its block's w(t_b); 1 for L' = 1 (the exact one-token term)."""
    if block_size == 1:
        return torch.ones(x0.shape, device=x0.device)
    return schedule.loss_weight(t.float()).repeat_interleave(block_size, dim=1)


def block_masked_nll(model, hidden: Tensor, x0: Tensor, xt: Tensor, t: Tensor, block_size: int,
                     schedule: NoiseSchedule, valid_mask: Optional[Tensor] = None) -> LossTerms:
    """The block NELBO terms of a noisy-stream output already computed (``hidden`` [B, T, D] after the
    final norm) at the masked positions of ``xt``: the dual objective's noisy stream."""
    return score_hidden(model, hidden, x0, xt, block_weights(t, block_size, schedule, x0), valid_mask)


def block_diffusion_training_loss(
    model, tokens: Tensor, objective, *, time_generator: torch.Generator,
    mask_generator: Optional[torch.Generator] = None, rank: int = 0, world_size: int = 1,
    accum_step: int = 0, num_accum_steps: int = 1, valid_mask: Optional[Tensor] = None,
) -> LossTerms:
    """One micro-batch of ``objective.name == "block_diffusion"`` (``objective.block_size`` = L').

    Times: one per block, stratified over all blocks of the global batch (``training_times`` with
    b * n_blocks draws per micro-batch). Arguments as ``diffmamba.objectives.mdlm.diffusion_training_loss``.
    """
    block_size = objective.block_size
    num_blocks = check_block_size(tokens.shape[1], block_size)
    t, valid_mask = training_times(tokens, objective, num_blocks, time_generator=time_generator,
                                   mask_generator=mask_generator, rank=rank, world_size=world_size,
                                   accum_step=accum_step, num_accum_steps=num_accum_steps, valid_mask=valid_mask)
    return block_diffusion_loss(model, tokens, t.view(tokens.shape[0], num_blocks), block_size,
                                make_schedule(objective.schedule, objective.eps), mask_generator, valid_mask)


@torch.no_grad()
def block_diffusion_nll(
    model, tokens: Tensor, block_size: int, schedule: NoiseSchedule, generator: torch.Generator, *,
    valid_mask: Optional[Tensor] = None, antithetic: bool = True, sampling_eps: float = 1e-3,
    num_time_samples: int = 1, ar_prefix: bool = False,
) -> tuple[Tensor, int]:
    """Stochastic block NELBO for evaluation: (summed weighted NLL [float64 scalar], valid tokens).

    One time per block, stratified over the batch's blocks; ``exp(sum / count)`` bounds the
    perplexity (exact for L' = 1). Deterministic given ``generator`` (on tokens' device).
    """
    batch, num_blocks = tokens.shape[0], check_block_size(tokens.shape[1], block_size)
    return nelbo_estimate(
        lambda t: block_diffusion_loss(model, tokens, t.view(batch, num_blocks), block_size, schedule, generator,
                                       valid_mask, ar_prefix),
        batch * num_blocks, generator, antithetic=antithetic, sampling_eps=sampling_eps,
        num_time_samples=num_time_samples, device=tokens.device)


# ------------------------------------------------------------------------------------------ objective


def block_diffusion_train(model: nn.Module, batch: MicroBatch, objective: ObjectiveConfig) -> NLL:
    """``objective.name: block_diffusion`` in the training loop (``objective.block_size`` = L')."""
    return masked_diffusion_train(block_diffusion_training_loss, model, batch, objective)


def block_diffusion_eval(model: nn.Module, tokens: Tensor, valid: Optional[Tensor], generator: torch.Generator,
                         objective: ObjectiveConfig) -> NLL:
    """The block NELBO bound per token (one time per block, stratified over the batch's blocks)."""
    total, count = block_diffusion_nll(model, tokens, objective.block_size,
                                       make_schedule(objective.schedule, objective.eps), generator,
                                       valid_mask=valid, antithetic=objective.antithetic,
                                       sampling_eps=objective.sampling_eps)
    return as_nll(total, count, tokens.device)
