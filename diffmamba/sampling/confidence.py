"""Confidence-based top-k unmasking with semi-autoregressive blocks (LLaDA ``generate``; docs/masked-diffusion.md §2.3).

The positions from the first generated one to the end are cut into blocks of ``block_length``
(0 = a single block); blocks are filled left to right, and the network always sees the whole
canvas (blocks only restrict which masks may be committed). Blocks with nothing to generate are
skipped; the ``steps`` budget is shared among the others (steps // n_blocks each, the first
steps % n_blocks get one more). Within a block with M masks and S steps, step j commits
k_j = floor(M / S) + [j < M mod S] tokens — a linear schedule in expectation. Each step:

1. x_hat = a float64 Gumbel-max draw from the clean distribution (temperature / top-k / top-p;
   temperature 0 = argmax);
2. confidence = probability of x_hat under the plain softmax of the logits (no noise, no
   temperature), only for masked positions of the current block;
3. commit the k_j most confident, leave the rest masked.

A step whose budget is zero in every row changes nothing and is skipped without a network call.
"""
from __future__ import annotations

import torch
from torch import Tensor

from diffmamba.sampling.base import (
    Denoiser, SampleResult, SamplerOptions, SamplingError, prepare_canvas, progress_bar,
)
from diffmamba.sampling.categorical import sample_tokens, token_probability


def masked_blocks(masked: Tensor, block_length: int) -> list[tuple[int, int]]:
    """[start, end) column ranges of the blocks that contain at least one mask (in any row)."""
    columns = masked.any(0).nonzero().flatten()
    if columns.numel() == 0:
        return []
    first, length = int(columns[0]), masked.shape[1]
    size = block_length or (length - first)
    spans = [(s, min(s + size, length)) for s in range(first, length, size)]
    return [(s, e) for s, e in spans if masked[:, s:e].any()]


def _steps_per_block(steps: int, n_blocks: int, block_length: int) -> list[int]:
    if steps < n_blocks:
        raise SamplingError(f"steps = {steps} is fewer than the {n_blocks} blocks to generate; "
                            f"use --steps {n_blocks} or more, or a larger --block-length than {block_length}")
    base, extra = divmod(steps, n_blocks)
    return [base + (1 if b < extra else 0) for b in range(n_blocks)]


def _commit_most_confident(confidence: Tensor, budget: Tensor) -> Tensor:
    """Bool [B, n]: per row, the ``budget[row]`` entries of highest confidence [B, n] (stable ties)."""
    order = confidence.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                                            .expand_as(order).contiguous())
    return rank < budget[:, None]


def confidence_sample(denoise: Denoiser, canvas: Tensor, fixed: Tensor, mask_id: int, options: SamplerOptions,
                      generator: torch.Generator) -> SampleResult:
    """LLaDA low-confidence remasking (= high-confidence committing) with semi-AR blocks.

    Reads steps, block_length, temperature, top_k, top_p. Every mask is committed by the last
    step of its block, so no noise-removal call is needed; NFE <= steps.
    """
    x, fixed = prepare_canvas(canvas, fixed, mask_id)
    blocks = masked_blocks(x == mask_id, options.block_length)
    plan = _steps_per_block(options.steps, len(blocks), options.block_length) if blocks else []
    nfe, steps_run = 0, 0
    with progress_bar(sum(plan), options) as bar:
        for (start, end), block_steps in zip(blocks, plan):
            num_masked = (x[:, start:end] == mask_id).sum(1)  # [B]
            base, extra = num_masked // block_steps, num_masked % block_steps
            for j in range(block_steps):
                budget = base + (j < extra).long()  # [B]
                steps_run += 1
                bar.update(1)
                if not budget.any():
                    continue
                logits = denoise(x)[:, start:end]
                nfe += 1
                block = x[:, start:end]
                masked = block == mask_id
                # Float64 work only at the masked positions of the block: [m, V+1].
                masked_logits = logits[masked]
                proposal = sample_tokens(masked_logits, mask_id, generator, temperature=options.temperature,
                                         top_k=options.top_k, top_p=options.top_p)  # [m]
                confidence = torch.full(block.shape, float("-inf"), dtype=torch.float64, device=x.device)
                confidence[masked] = token_probability(masked_logits, proposal, mask_id)
                commit = _commit_most_confident(confidence, budget) & masked
                proposals = block.clone()
                proposals[masked] = proposal
                x = x.clone()
                x[:, start:end] = torch.where(commit, proposals, block)
                if options.progress:  # the count syncs the GPU: only when shown
                    bar.set_postfix(nfe=nfe, masked=int((x == mask_id).sum()))
    return SampleResult(x, nfe, steps_run)
