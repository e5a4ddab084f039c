"""``objective.name: dual``: one set of weights trained as an AR model and as a block denoiser at once.

Design. One forward pass (``diffmamba.modules.two_stream.dual_streams``) computes two streams with the
same parameters:

- the **AR stream** over the clean tokens x_0: every layer in AR mode (forward direction only,
  causal) — exactly ``model(x0, mode="ar")``, whose shifted cross-entropy is the AR loss;
- the **noisy stream** over x_t (blocks of L' = ``objective.block_size`` tokens, each masked at
  its own time, as block diffusion masks them): every layer bidirectional inside the block, the
  forward scan of block b starting from the AR stream's forward state at the end of block b-1, at
  the same layer; the reverse scan is block-local. Its masked-position NLL, weighted by w(t_b),
  is the block-diffusion NELBO of x_0 given the AR prefix states.

So the denoiser is conditioned on exactly the state AR decoding holds after any prefix
(``model.prefill(prefix)``), at *every* position, not only at block boundaries:
``model(block, mode="diffusion", fwd_states=model.prefill(prefix)[1])`` is the trained denoiser
of the block after ``prefix``. That is what self-speculative decoding (``sampling.speculative``)
drafts with, and what ``--mode block`` runs on a dual checkpoint (AR-mode prefill and commits).
With L' = T (one block) the noisy stream is plain masked diffusion.

Mix. ``objective.ar_weight`` = w in [0, 1]; a micro-batch returns

    total = (1 - w) * diffusion_nll_sum + w * ar_nll_sum,   count = (1 - w) * n_diffusion + w * n_ar

so the loop's total / count over the global batch is the w-weighted token mean over both token
sets (n_ar = n_diffusion minus one target per row: within 1/T of (1 - w) L_diff + w L_AR), and
stays exact however the batch is split over processes and accumulation steps. Both losses are
computed every step — the AR stream is needed anyway as the noisy stream's conditioning, so the
AR loss costs one head, not another forward — rather than drawing one objective per step.

Validation reports the exact AR NLL (``val_ppl`` is AR perplexity, comparable with an AR run);
``diffmamba eval compare`` measures the block-diffusion side.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from diffmamba.config import ObjectiveConfig
from diffmamba.modules.two_stream import check_block_size
from diffmamba.objectives.ar import shifted_nll
from diffmamba.objectives.base import NLL, MicroBatch
from diffmamba.objectives.bd3lm import block_masked_nll, mask_blocks
from diffmamba.objectives.mdlm import LossTerms, training_times
from diffmamba.objectives.schedule import NoiseSchedule, make_schedule


class DualTerms(NamedTuple):
    diffusion: LossTerms  # block NELBO terms of the noisy stream
    ar: LossTerms  # shifted next-token terms of the AR stream


def dual_loss(model, x0: Tensor, t: Tensor, block_size: int, schedule: NoiseSchedule,
              generator: Optional[torch.Generator] = None, valid_mask: Optional[Tensor] = None) -> DualTerms:
    """Mask each block of x0 at its time t [B, T / L'], run both streams (``dual_streams``, reached
    through ``model(x0, mode="ar", block_size=L', noisy=x_t)``), return both loss terms."""
    xt = mask_blocks(x0, t, block_size, schedule, model.mask_token_id, generator, valid_mask)
    kwargs = {} if valid_mask is None else {"valid_mask": valid_mask}
    noisy_hidden, ar_hidden = model(x0, mode="ar", block_size=block_size, noisy=xt, return_hidden=True, **kwargs)
    diffusion = block_masked_nll(model, noisy_hidden, x0, xt, t, block_size, schedule, valid_mask)
    ar = shifted_nll(model.logits(ar_hidden), x0, valid_mask, model.mask_token_id)
    return DualTerms(diffusion, ar)


def mix(terms: DualTerms, ar_weight: float) -> tuple[Tensor, Tensor]:
    """(total, count) of the w-weighted token mean (module docstring)."""
    w = float(ar_weight)
    total = (1.0 - w) * terms.diffusion.nll_sum + w * terms.ar.nll_sum
    count = (1.0 - w) * terms.diffusion.num_tokens.double() + w * terms.ar.num_tokens.double()
    return total, count


def dual_train(model: nn.Module, batch: MicroBatch, objective: ObjectiveConfig) -> NLL:
    """``objective.name: dual`` in the training loop.

    Times and masks as block diffusion draws them (``training_times``: variable-length cuts, one
    time per block stratified over all blocks of the global batch, from the micro-batch's
    generators, so resume is exact).
    """
    tokens = batch.tokens
    num_blocks = check_block_size(tokens.shape[1], objective.block_size)
    t, valid = training_times(tokens, objective, num_blocks, time_generator=batch.time_generator,
                              mask_generator=batch.noise_generator, rank=batch.rank, world_size=batch.world_size,
                              accum_step=batch.accum_step, num_accum_steps=batch.num_accum_steps,
                              valid_mask=batch.valid)
    terms = dual_loss(model, tokens, t.view(tokens.shape[0], num_blocks), objective.block_size,
                      make_schedule(objective.schedule, objective.eps), batch.noise_generator, valid)
    return NLL(*mix(terms, objective.ar_weight))
