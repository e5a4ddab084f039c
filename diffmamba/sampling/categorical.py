"""Categorical sampling shared by the diffusion samplers and AR decoding.

Rule (docs/masked-diffusion.md §2.7-2.8): temperature, top-k and top-p act on the **clean-token
distribution** (the mask column excluded, never the stay-masked mass), and the Gumbel-max draw is
made in **float64**. Gumbel noise built from float32 (worse, bf16) uniforms is truncated — u cannot
get close enough to 0 or 1 — which lowers the effective temperature and biases gen-PPL down.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def top_k_filter(probs: Tensor, k: int) -> Tensor:
    """Keep the k most probable entries of each row of ``probs`` [..., V] and renormalise (k = 0: all)."""
    if k <= 0 or k >= probs.shape[-1]:
        return probs
    kth = probs.topk(k, dim=-1).values[..., -1:]
    kept = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    return kept / kept.sum(-1, keepdim=True)


def top_p_filter(probs: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of most probable entries whose mass reaches ``p``.

    The top-1 entry is always kept (so p -> 0 is greedy), and the result is renormalised.
    probs: [..., V] (rows sum to 1); p in (0, 1]. Returns the same shape and dtype.
    """
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p >= 1:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs  # mass of strictly more probable entries
    keep_sorted = mass_before < p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    return kept / kept.sum(-1, keepdim=True)


def clean_distribution(
    logits: Tensor, mask_id: Optional[int], temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
) -> Tensor:
    """Float64 probabilities over clean tokens, with the mask column at exactly 0.

    Args:
        logits: [..., V+1] (or [..., V] with ``mask_id=None``), any float dtype.
        temperature: > 0 divides the logits; 0 means greedy (one-hot on the argmax).
        top_k: keep the k most probable tokens (0 = all). top_p: nucleus mass in (0, 1].

    Returns:
        [..., V+1] float64, rows summing to 1.
    """
    scores = logits.to(torch.float64)
    if mask_id is not None:
        scores = scores.clone()
        scores[..., mask_id] = float("-inf")
    if temperature == 0:
        return torch.zeros_like(scores).scatter_(-1, scores.argmax(-1, keepdim=True), 1.0)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    probs = (scores / temperature).softmax(-1)
    probs = top_k_filter(probs, top_k)
    return top_p_filter(probs, top_p)


def _argmax_last(scores: Tensor) -> Tensor:
    """argmax over the last axis; its own function so tests can check the dtype that reaches it."""
    return scores.argmax(-1)


def gumbel_max(scores: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """argmax(scores + Gumbel noise) over the last axis, in float64: a draw from softmax(scores). [...] int64"""
    scores = scores.to(torch.float64)
    u = torch.rand(scores.shape, dtype=torch.float64, generator=generator, device=scores.device)
    # u == 0 gives -inf noise (never chosen), which is the correct limit; rand never returns 1.
    return _argmax_last(scores - torch.log(-torch.log(u)))


def gumbel_argmax(probs: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Draw one index per row of ``probs`` [..., V] by Gumbel-max in float64. Returns [...] int64."""
    return gumbel_max(probs.to(torch.float64).log(), generator)


def sample_tokens(
    logits: Tensor, mask_id: Optional[int], generator: Optional[torch.Generator] = None, *,
    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
) -> Tensor:
    """Sample clean token ids from logits [..., V+1] -> [...]; greedy when temperature == 0.

    Without top-k / top-p the Gumbel-max runs on the float64 tempered logits directly (they differ
    from the log-probabilities by a per-row constant), which saves a softmax over the vocabulary.
    """
    if temperature == 0 or top_k > 0 or top_p < 1:
        probs = clean_distribution(logits, mask_id, temperature, top_k, top_p)
        return probs.argmax(-1) if temperature == 0 else gumbel_argmax(probs, generator)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    scores = logits.to(torch.float64) / temperature
    if mask_id is not None:
        scores[..., mask_id] = float("-inf")
    return gumbel_max(scores, generator)


def token_probability(logits: Tensor, tokens: Tensor, mask_id: Optional[int]) -> Tensor:
    """Float64 softmax probability (mask excluded, no temperature) of ``tokens`` [...] under ``logits`` [..., V+1]."""
    scores = logits.to(torch.float64)
    if mask_id is not None:
        scores = scores.clone()
        scores[..., mask_id] = float("-inf")
    return (scores.gather(-1, tokens[..., None]).squeeze(-1) - scores.logsumexp(-1)).exp()
