"""Training objectives as the loop sees them: a name -> ``Objective`` table.

Every objective returns *sums* (summed per-token NLL and the number of tokens it covers) for one
micro-batch. The loop adds them over accumulation steps and processes and divides once, so the
gradient is the exact token mean over the global batch however it is split.

To add an objective (e.g. block diffusion), write two functions with the signatures of
``diffusion_train`` / ``diffusion_eval`` and register them: ``OBJECTIVES["name"] = Objective(...)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor, nn

from diffmamba.block.objective import block_diffusion_eval, block_diffusion_train
from diffmamba.config import ObjectiveConfig
from diffmamba.dual import dual_train


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


def diffusion_train(model: nn.Module, batch: MicroBatch, objective: ObjectiveConfig) -> NLL:
    from diffmamba.diffusion.loss import diffusion_training_loss

    return masked_diffusion_train(diffusion_training_loss, model, batch, objective)


def diffusion_eval(model: nn.Module, tokens: Tensor, valid: Optional[Tensor], generator: torch.Generator,
                   objective: ObjectiveConfig) -> NLL:
    """The NELBO bound per token (antithetic times over the batch, as MDLM's validation)."""
    from diffmamba.diffusion.loss import diffusion_nll
    from diffmamba.diffusion.schedule import make_schedule

    total, count = diffusion_nll(model, tokens, make_schedule(objective.schedule, objective.eps), generator,
                                 valid_mask=valid, antithetic=objective.antithetic,
                                 sampling_eps=objective.sampling_eps)
    return NLL(total, torch.tensor(count, device=tokens.device))


def diffusion_times(batch: MicroBatch, objective: ObjectiveConfig) -> Tensor:
    """The times ``diffusion_train`` draws for this micro-batch (a replay of the same generator
    state; used by the debug log that checks the strata of the global batch)."""
    from diffmamba.diffusion.masking import stratified_times

    replay = torch.Generator().set_state(batch.time_generator.get_state())
    return stratified_times(batch.tokens.shape[0], batch.rank, batch.world_size, batch.accum_step,
                            batch.num_accum_steps, replay, antithetic=objective.antithetic,
                            sampling_eps=objective.sampling_eps)


def ar_train(model: nn.Module, batch: MicroBatch, objective: ObjectiveConfig) -> NLL:
    from diffmamba.ar.loss import ar_loss

    terms = ar_loss(model, batch.tokens, batch.valid)
    return NLL(terms.nll_sum, terms.num_tokens)


def ar_eval(model: nn.Module, tokens: Tensor, valid: Optional[Tensor], generator: torch.Generator,
            objective: ObjectiveConfig) -> NLL:
    """Exact next-token NLL (no noise: the generator is unused)."""
    from diffmamba.ar.loss import ar_nll

    total, count = ar_nll(model, tokens, valid)
    return NLL(total, torch.tensor(count, device=tokens.device))


OBJECTIVES: dict[str, Objective] = {
    "diffusion": Objective(diffusion_train, diffusion_eval, "diffusion"),
    "ar": Objective(ar_train, ar_eval, "ar"),
    "block_diffusion": Objective(block_diffusion_train, block_diffusion_eval, "block_diffusion"),
    # AR + block diffusion on the AR stream's states in one pass (diffmamba/dual.py); validation: exact AR NLL
    "dual": Objective(dual_train, ar_eval, "dual"),
}
