"""Block-diffusion NELBO (shared/spec/block-diffusion.md §2, masked-diffusion.md §1.3-1.4, §4.2).

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

Training:   ``block_diffusion_training_loss(model, tokens, objective, time_generator=..., ...)``
Evaluation: ``block_diffusion_nll(model, tokens, block_size, schedule, generator)``
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from diffmamba.block.streams import check_block_size
from diffmamba.diffusion.loss import LossTerms, masked_and_count
from diffmamba.diffusion.masking import cut_random_suffixes, eval_times, stratified_times
from diffmamba.diffusion.schedule import NoiseSchedule, make_schedule


def mask_blocks(x0: Tensor, t: Tensor, block_size: int, schedule: NoiseSchedule, mask_id: int,
                generator: Optional[torch.Generator] = None, valid_mask: Optional[Tensor] = None) -> Tensor:
    """x_t ~ q(x_t | x_0) with one time per block: x0 [B, T], t [B, T / L'] -> x_t [B, T].

    L' = 1 masks every valid token (the exact one-token term, module docstring). Draws the same
    uniforms as ``mask_tokens`` on x0 with per-row times, so one block per row reproduces plain
    diffusion masking exactly.
    """
    batch, length = x0.shape
    if block_size == 1:
        masked = torch.ones_like(x0, dtype=torch.bool) if valid_mask is None else valid_mask
        return torch.where(masked, torch.full_like(x0, mask_id), x0)
    row_times = t.repeat_interleave(block_size, dim=1)  # [B, T]: each token's block time
    mask_prob = schedule.mask_prob(row_times.to(torch.float64))
    u = torch.rand(x0.shape, dtype=torch.float64, generator=generator, device=x0.device)
    masked = u < mask_prob.to(x0.device)
    if valid_mask is not None:
        masked &= valid_mask
    return torch.where(masked, torch.full_like(x0, mask_id), x0)


def block_diffusion_loss(model, x0: Tensor, t: Tensor, block_size: int, schedule: NoiseSchedule,
                         generator: Optional[torch.Generator] = None,
                         valid_mask: Optional[Tensor] = None, ar_prefix: bool = False) -> LossTerms:
    """Mask each block of x0 at its time, run both streams, return the weighted NLL terms.

    Args:
        model: a ``DiffMamba`` (or a wrapper forwarding ``block_size`` / ``noisy`` to it and
            exposing ``mask_token_id`` and ``logits``).
        x0: [B, T] ids; t: [B, T / block_size] block times in (0, 1] (ignored for L' = 1);
        generator: masking draws, on x0's device; valid_mask: [B, T] bool or None.
        ar_prefix: blocks conditioned on the AR stream's states (a ``dual`` model, diffmamba/dual.py).

    Returns:
        LossTerms (nll_sum over valid tokens; num_tokens = valid tokens, masked or not).
    """
    num_blocks = check_block_size(x0.shape[1], block_size)
    if t.shape != (x0.shape[0], num_blocks):
        raise ValueError(f"t must have shape [B, T / block_size] = {[x0.shape[0], num_blocks]}, got {list(t.shape)}")
    mask_id = model.mask_token_id
    xt = mask_blocks(x0, t, block_size, schedule, mask_id, generator, valid_mask)
    kwargs = {} if valid_mask is None else {"valid_mask": valid_mask}
    # The head runs only at masked positions: unmasked ones carry no loss (SUBS carry-over).
    hidden = model(x0, mode="ar" if ar_prefix else "diffusion", block_size=block_size, noisy=xt, return_hidden=True,
                   **kwargs)
    hidden = hidden[0] if ar_prefix else hidden  # dual streams: (noisy, AR)
    return block_masked_nll(model, hidden, x0, xt, t, block_size, schedule, valid_mask)


def block_masked_nll(model, hidden: Tensor, x0: Tensor, xt: Tensor, t: Tensor, block_size: int,
                     schedule: NoiseSchedule, valid_mask: Optional[Tensor] = None) -> LossTerms:
    """The weighted NLL terms of the noisy stream's ``hidden`` [B, T, D] (after the final norm) at the
    masked positions of ``xt``, each block weighted by its time's w(t) (1 for L' = 1)."""
    mask_id = model.mask_token_id
    masked, num_tokens = masked_and_count(x0, xt, mask_id, valid_mask)
    if block_size == 1:
        weight = torch.ones(int(masked.sum()), device=x0.device)
    else:
        weight = schedule.loss_weight(t.float()).repeat_interleave(block_size, dim=1)[masked]
    logits = model.logits(hidden[masked])  # [n_masked, V + 1], the mask column at -inf (SUBS)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    nll_sum = (weight.to(logits.dtype) * F.cross_entropy(logits, x0[masked], reduction="none")).sum()
    return LossTerms(nll_sum / num_tokens.clamp(min=1), nll_sum, num_tokens)


def block_diffusion_training_loss(
    model, tokens: Tensor, objective, *, time_generator: torch.Generator,
    mask_generator: Optional[torch.Generator] = None, rank: int = 0, world_size: int = 1,
    accum_step: int = 0, num_accum_steps: int = 1, valid_mask: Optional[Tensor] = None,
) -> LossTerms:
    """One micro-batch of ``objective.name == "block_diffusion"`` (``objective.block_size`` = L').

    Times: one per block, stratified over all blocks of the global batch (``stratified_times`` over
    b * n_blocks draws per micro-batch, so strata never repeat across ranks or accumulation
    steps). Variable-length cuts as in plain diffusion (``objective.var_length_prob``).
    Arguments as ``diffmamba.diffusion.loss.diffusion_training_loss``.
    """
    schedule = make_schedule(objective.schedule, objective.eps)
    block_size = objective.block_size
    num_blocks = check_block_size(tokens.shape[1], block_size)
    if objective.var_length_prob > 0:
        base = valid_mask if valid_mask is not None else torch.ones_like(tokens, dtype=torch.bool)
        valid_mask = cut_random_suffixes(base, objective.var_length_prob, mask_generator)
    t = stratified_times(tokens.shape[0] * num_blocks, rank, world_size, accum_step, num_accum_steps,
                         time_generator, antithetic=objective.antithetic, sampling_eps=objective.sampling_eps,
                         device=tokens.device)
    return block_diffusion_loss(model, tokens, t.view(tokens.shape[0], num_blocks), block_size, schedule,
                                mask_generator, valid_mask)


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
    if num_time_samples < 1:
        raise ValueError(f"num_time_samples must be >= 1, got {num_time_samples}")
    num_blocks = check_block_size(tokens.shape[1], block_size)
    time_generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator,
                                                                    device=generator.device)))
    total = torch.zeros((), dtype=torch.float64, device=tokens.device)
    count = 0
    for _ in range(num_time_samples):
        t = eval_times(tokens.shape[0] * num_blocks, time_generator, antithetic=antithetic,
                       sampling_eps=sampling_eps, device=tokens.device).view(tokens.shape[0], num_blocks)
        terms = block_diffusion_loss(model, tokens, t, block_size, schedule, generator, valid_mask, ar_prefix)
        total += terms.nll_sum.double()
        count = int(terms.num_tokens)
    return total / num_time_samples, count
