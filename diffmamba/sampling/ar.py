"""Autoregressive decoding with the recurrent state: one chunked prefill, then O(1) steps.

    result = ar_generate(model, prompt, max_new_tokens=128, generator=g, top_p=0.9)

The prompt is scanned in chunks (``model.prefill`` continues from the returned state, so memory
stays bounded for long prompts), then each new token costs one ``model.step`` — constant time and
memory per token, the fair AR baseline (docs/masked-diffusion.md §3.3 / §4.4), unlike re-running the full sequence.
Tokens are drawn with the same float64 Gumbel-max and clean-distribution filters as the diffusion
samplers (``diffmamba.sampling.categorical``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from diffmamba.sampling.base import SampleResult, SamplerOptions, progress_bar
from diffmamba.sampling.categorical import sample_tokens
from diffmamba.sampling.graphs import GraphedStep


@torch.no_grad()
def ar_generate(
    model, prompt: Tensor, max_new_tokens: int, generator: Optional[torch.Generator] = None, *,
    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_id: Optional[int] = None,
    prefill_chunk: int = 1024, progress: bool = False, progress_desc: str = "decoding", cuda_graph: bool = False,
) -> SampleResult:
    """Sample ``max_new_tokens`` after ``prompt``.

    Args:
        model: has ``prefill(tokens, state=None) -> (logits [B, T, V+1], state)``,
            ``step(token [B], state) -> (logits [B, V+1], state)`` and ``mask_token_id``.
        prompt: [B, P] ids, P >= 1 (start unconditional generation from an EOS / BOS token).
        generator: on the model's device; all randomness comes from it.
        temperature (0 = greedy), top_k (0 = off), top_p (1 = off): on the clean distribution.
        eos_id: if given, a row stops at its first EOS and is padded with EOS after it; decoding
            ends early once every row has stopped.
        prefill_chunk: prompt tokens per prefill call.
        cuda_graph: replay the step from a CUDA graph captured after the prefill
            (``diffmamba.sampling.graphs``; CUDA, Mamba-3 layers only): the same tokens, less
            host overhead per token at small batch.

    Returns:
        SampleResult(tokens [B, P + n] with n <= max_new_tokens, nfe = model calls
        (prefill chunks + steps), steps = tokens decoded).
    """
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be [B, P] with P >= 1 (e.g. a single EOS token), got {tuple(prompt.shape)}")
    if max_new_tokens < 0 or prefill_chunk < 1:
        raise ValueError("max_new_tokens must be >= 0 and prefill_chunk >= 1")
    SamplerOptions(temperature=temperature, top_k=top_k, top_p=top_p)  # validates the knobs
    mask_id = model.mask_token_id
    state, nfe = None, 0
    for chunk in prompt.split(prefill_chunk, dim=1):
        logits, state = model.prefill(chunk, state=state)
        nfe += 1
    next_logits = logits[:, -1]
    graphed = None
    if cuda_graph and max_new_tokens > 1:
        graphed = GraphedStep.reused(model, state)
    out = torch.empty(prompt.shape[0], max_new_tokens, dtype=prompt.dtype, device=prompt.device)
    finished = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    steps = 0
    options = SamplerOptions(progress=progress, progress_desc=progress_desc)
    with progress_bar(max_new_tokens, options) as bar:
        for i in range(max_new_tokens):
            token = sample_tokens(next_logits, mask_id, generator, temperature=temperature, top_k=top_k, top_p=top_p)
            if eos_id is not None:
                token = torch.where(finished, torch.full_like(token, eos_id), token)
                finished |= token == eos_id
            out[:, i] = token
            steps += 1
            bar.update(1)
            if i == max_new_tokens - 1 or (eos_id is not None and bool(finished.all())):
                break
            if graphed is not None:
                next_logits = graphed(token)  # a static buffer: sampled from before the next call
            else:
                next_logits, state = model.step(token, state)
            nfe += 1
    return SampleResult(torch.cat([prompt, out[:, :steps]], dim=1), nfe, steps)
