"""Autoregressive objective on the same trunk: shifted next-token cross-entropy (docs/masked-diffusion.md §4.1).

Position i of ``model(tokens, mode="ar")`` predicts token i + 1. A target counts when both it and
its context token are valid; the loss is normalised by the number of such targets, the AR
counterpart of the diffusion loss's valid-token normalisation. ``ar_nll`` returns the exact NLL as
(sum, count) for evaluation: ppl = exp(sum / count), to compare with the diffusion bound.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffmamba.config import ObjectiveConfig
from diffmamba.objectives.base import NLL, MicroBatch, as_nll
from diffmamba.objectives.mdlm import LossTerms


def shifted_nll(logits: Tensor, tokens: Tensor, valid_mask: Optional[Tensor] = None,
                mask_id: Optional[int] = None) -> LossTerms:
    """Next-token NLL terms from AR logits.

    Args:
        logits: [B, T, V+1] from ``model(tokens, mode="ar")``. tokens: [B, T] ids.
        valid_mask: [B, T] bool or None. mask_id: column forced to -inf (the model already does).

    Returns:
        LossTerms over the B * (T - 1) shifted targets (fewer with padding).
    """
    if logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} must agree on [B, T]")
    scores = logits[:, :-1].float()
    if mask_id is not None:
        scores = scores.clone()
        scores[..., mask_id] = float("-inf")
    targets = tokens[:, 1:]
    ce = F.cross_entropy(scores.reshape(-1, scores.shape[-1]), targets.reshape(-1), reduction="none")
    if valid_mask is None:
        nll_sum = ce.sum()
        count = torch.tensor(targets.numel(), device=tokens.device)
    else:
        counted = (valid_mask[:, 1:] & valid_mask[:, :-1]).reshape(-1)
        nll_sum = torch.where(counted, ce, torch.zeros_like(ce)).sum()
        count = counted.sum()
    return LossTerms(nll_sum / count.clamp(min=1), nll_sum, count)


def _ar_logits(model, tokens: Tensor, valid_mask: Optional[Tensor]) -> Tensor:
    if valid_mask is None:
        return model(tokens, mode="ar")
    return model(tokens, mode="ar", valid_mask=valid_mask)


def ar_loss(model, tokens: Tensor, valid_mask: Optional[Tensor] = None) -> LossTerms:
    """Training loss: shifted CE of ``model(tokens, mode="ar")``. tokens [B, T], valid_mask [B, T] or None."""
    return shifted_nll(_ar_logits(model, tokens, valid_mask), tokens, valid_mask, model.mask_token_id)


@torch.no_grad()
def ar_nll(model, tokens: Tensor, valid_mask: Optional[Tensor] = None) -> tuple[Tensor, int]:
    """Exact NLL for evaluation: (sum over targets [float64 scalar], number of targets)."""
    terms = shifted_nll(_ar_logits(model, tokens, valid_mask), tokens, valid_mask, model.mask_token_id)
    return terms.nll_sum.double(), int(terms.num_tokens)


def ar_train(model: nn.Module, batch: MicroBatch, objective: ObjectiveConfig) -> NLL:
    terms = ar_loss(model, batch.tokens, batch.valid)
    return NLL(terms.nll_sum, terms.num_tokens)


def ar_eval(model: nn.Module, tokens: Tensor, valid: Optional[Tensor], generator: torch.Generator,
            objective: ObjectiveConfig) -> NLL:
    """Exact next-token NLL (no noise: the generator is unused)."""
    return as_nll(*ar_nll(model, tokens, valid), tokens.device)
