"""``objective.name: block_diffusion`` as the training loop sees it (``diffmamba.objectives``).

Same contract as the diffusion objective: *sums* for one micro-batch (summed per-token NLL and the
tokens it covers), so the loop's token mean over the global batch is exact however it is split.
``objective.block_size`` is L' (validated to divide ``data.seq_len`` by ``RunConfig``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


def block_diffusion_train(model: nn.Module, batch, objective):
    """batch: ``diffmamba.objectives.MicroBatch``; returns ``NLL(total, count)``."""
    from diffmamba.block.loss import block_diffusion_training_loss
    from diffmamba.objectives import masked_diffusion_train

    return masked_diffusion_train(block_diffusion_training_loss, model, batch, objective)


def block_diffusion_eval(model: nn.Module, tokens: Tensor, valid: Optional[Tensor], generator: torch.Generator,
                         objective):
    """The block NELBO bound per token (one time per block, stratified over the batch's blocks)."""
    from diffmamba.block.loss import block_diffusion_nll
    from diffmamba.diffusion.schedule import make_schedule
    from diffmamba.objectives import NLL

    total, count = block_diffusion_nll(model, tokens, objective.block_size,
                                       make_schedule(objective.schedule, objective.eps), generator,
                                       valid_mask=valid, antithetic=objective.antithetic,
                                       sampling_eps=objective.sampling_eps)
    return NLL(total, torch.tensor(count, device=tokens.device))
