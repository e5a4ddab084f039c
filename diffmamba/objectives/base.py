"""What every training objective receives and returns: ``MicroBatch`` in, ``NLL`` (sums) out.

Every objective returns *sums* (summed per-token NLL and the number of tokens it covers) for one
micro-batch. The loop adds them over accumulation steps and processes and divides once, so the
gradient is the exact token mean over the global batch however it is split.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor, nn

from diffmamba.config import ObjectiveConfig


class MicroBatch(NamedTuple):
    """Where one micro-batch sits in the optimizer step, and the noise it may draw."""

    tokens: Tensor  # [b, L] ids
    valid: Optional[Tensor]  # [b, L] bool or None (all valid)
    rank: int
    world_size: int
    accum_step: int
    num_accum_steps: int
    time_generator: torch.Generator  # CPU, seeded identically on every rank for this optimizer step
    noise_generator: torch.Generator  # on the tokens' device, seeded per (step, rank)


class NLL(NamedTuple):
    total: Tensor  # scalar: summed per-token NLL (differentiable in training)
    count: Tensor  # scalar: tokens counted


@dataclass(frozen=True)
class Objective:
    train: Callable[[nn.Module, MicroBatch, ObjectiveConfig], NLL]
    # (model, tokens, valid, generator, objective config) -> NLL; deterministic given the generator
    evaluate: Callable[[nn.Module, Tensor, Optional[Tensor], torch.Generator, ObjectiveConfig], NLL]
    model_mode: str  # what ``model(tokens, mode=...)`` runs; the reported flops depend on it


def masked_diffusion_train(loss_fn: Callable, model: nn.Module, batch: MicroBatch, objective: ObjectiveConfig) -> NLL:
    """Run a masked-diffusion training loss (plain or block) with this micro-batch's generators and
    its place in the global batch (for the stratified times); returns its (sum, count)."""
    terms = loss_fn(
        model, batch.tokens, objective, time_generator=batch.time_generator,
        mask_generator=batch.noise_generator, rank=batch.rank, world_size=batch.world_size,
        accum_step=batch.accum_step, num_accum_steps=batch.num_accum_steps, valid_mask=batch.valid)
    return NLL(terms.nll_sum, terms.num_tokens)


def as_nll(total: Tensor, count: int, device: torch.device) -> NLL:
    """An evaluation's (float64 sum, int count) as an ``NLL`` on ``device``."""
    return NLL(total, torch.tensor(count, device=device))
