"""Confidence-aware parallel unmasking (Fast-dLLM's threshold rule), with optional semi-AR blocks.

Every step makes one denoiser call and, per row, commits **every** masked position of the current
block whose confidence exceeds ``options.threshold`` — and always at least the single most
confident one, so a step never stalls. The number of tokens a step buys is therefore decided by
the model's certainty, not by a fixed budget: easy stretches (a fixed phrase, a repeated word)
cost one call for several tokens, hard ones fall back to one token per call.

Per step, for the masked positions of the current block:

1. x_hat = a float64 Gumbel-max draw from the clean distribution (temperature / top-k / top-p;
   temperature 0 = argmax), as every other sampler draws;
2. confidence = the probability of x_hat under the plain softmax of the logits (no temperature,
   no filter) — with greedy decoding this is the top probability, as in Fast-dLLM;
3. commit x_hat where confidence > threshold, plus the argmax-confidence position of the row.

``threshold = 1`` commits exactly one token per step (nothing exceeds 1): one-at-a-time confidence
decoding. Blocks (``options.block_length``, 0 = one block) are filled left to right as in
``diffmamba.sampling.confidence``: the network sees the whole canvas, blocks only restrict which
masks may be committed. ``options.steps`` is not used: the loop runs until no mask is left (at most
one step per generated token), so it always ends with no mask and needs no noise-removal call.
"""
from __future__ import annotations

import torch
from torch import Tensor

from diffmamba.sampling.base import Denoiser, SampleResult, SamplerOptions, prepare_canvas, progress_bar
from diffmamba.sampling.categorical import sample_tokens, token_probability
from diffmamba.sampling.confidence import masked_blocks


def threshold_commits(confidence: Tensor, masked: Tensor, threshold: float) -> Tensor:
    """Bool [B, n]: the masked entries whose ``confidence`` [B, n] exceeds ``threshold``, plus each
    row's most confident masked entry (rows with no masked entry commit nothing)."""
    confidence = confidence.masked_fill(~masked, float("-inf"))
    best = torch.zeros_like(masked).scatter_(1, confidence.argmax(1, keepdim=True), True)
    return masked & ((confidence > threshold) | best)


def parallel_sample(denoise: Denoiser, canvas: Tensor, fixed: Tensor, mask_id: int, options: SamplerOptions,
                    generator: torch.Generator) -> SampleResult:
    """Threshold parallel unmasking. Reads threshold, block_length, temperature, top_k, top_p.

    NFE = steps <= the number of generated positions of the fullest row (per block, the fullest
    row's masks in that block).
    """
    x, fixed = prepare_canvas(canvas, fixed, mask_id)
    blocks = masked_blocks(x == mask_id, options.block_length)
    nfe = 0
    with progress_bar(int((x == mask_id).sum(1).max()) if x.numel() else 0, options) as bar:
        for start, end in blocks:
            while True:
                block = x[:, start:end]
                masked = block == mask_id
                if not masked.any():
                    break
                logits = denoise(x)[:, start:end]
                nfe += 1
                masked_logits = logits[masked]  # [m, V + 1]: float64 work only where masked
                proposal = sample_tokens(masked_logits, mask_id, generator, temperature=options.temperature,
                                         top_k=options.top_k, top_p=options.top_p)
                confidence = torch.zeros(block.shape, dtype=torch.float64, device=x.device)
                confidence[masked] = token_probability(masked_logits, proposal, mask_id)
                commit = threshold_commits(confidence, masked, options.threshold)
                proposals = block.clone()
                proposals[masked] = proposal
                x = x.clone()
                x[:, start:end] = torch.where(commit, proposals, block)
                bar.update(1)
                if options.progress:  # the count syncs the GPU: only when shown
                    bar.set_postfix(nfe=nfe, masked=int((x == mask_id).sum()))
    return SampleResult(x, nfe, nfe)
