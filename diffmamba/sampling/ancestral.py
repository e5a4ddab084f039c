"""Time-grid samplers: MDLM ancestral (cached / uncached); the grid loop ReMDM-cap (``remdm``) reuses.

Ancestral step from t to s < t (docs/masked-diffusion.md §2.1): a masked position unmasks with
probability (alpha_s - alpha_t) / (1 - alpha_t), to a token drawn from the clean distribution p;
otherwise it stays masked. Unmasked positions are carried over (SUBS). The unmask decision and the
token draw are made separately — P(unmask to v) = P(unmask) p[v], the same law as a Gumbel-max
over the joint [p (alpha_s - alpha_t), (1 - alpha_s)] vector — so that temperature / top-p touch
only p, greedy decoding (temperature 0) is possible, and the float64 token draw runs only at the
positions that actually unmask.

Cache (§2.2): the denoiser is time-agnostic, so if a step changed nothing the next step reuses the
previous logits instead of calling the network. Both variants draw the same random numbers in the
same order, so under one seed they give identical samples; only the NFE differs.
"""
from __future__ import annotations

import torch
from torch import Tensor

from diffmamba.objectives.schedule import make_schedule
from diffmamba.sampling.base import (
    Denoiser, SampleResult, SamplerOptions, fill_masks_greedily, prepare_canvas, progress_bar,
)
from diffmamba.sampling.categorical import sample_tokens


def _draw_at(x: Tensor, where: Tensor, logits: Tensor, mask_id: int, options: SamplerOptions,
             generator: torch.Generator) -> Tensor:
    """x with the positions in ``where`` [B, L] replaced by tokens drawn from ``logits`` [B, L, V+1]."""
    if not where.any():
        return x
    x = x.clone()
    x[where] = sample_tokens(logits[where], mask_id, generator, temperature=options.temperature,
                             top_k=options.top_k, top_p=options.top_p)
    return x


def grid_sample(denoise: Denoiser, canvas: Tensor, fixed: Tensor, mask_id: int, options: SamplerOptions,
                 generator: torch.Generator, *, use_cache: bool, eta: float) -> SampleResult:
    """The loop of ancestral (eta = 0) and ReMDM-cap (eta > 0, ``remdm``) over linspace(1, time_eps, steps+1)."""
    x, fixed = prepare_canvas(canvas, fixed, mask_id)
    schedule = make_schedule(options.schedule, options.schedule_eps)
    times = torch.linspace(1.0, options.time_eps, options.steps + 1, dtype=torch.float64)
    alphas = schedule.alpha(times).tolist()
    nfe, steps_run = 0, 0
    logits, logits_current = None, False  # logits_current: ``logits`` were computed on this x
    with progress_bar(options.steps, options) as bar:
        for i in range(options.steps):
            masked = x == mask_id
            if not masked.any() and eta == 0:
                break  # nothing left to unmask; without remasking no later step can change x
            if not (use_cache and logits_current):
                logits = denoise(x)
                nfe += 1
            alpha_t, alpha_s = alphas[i], alphas[i + 1]
            # One float64 uniform per position decides both unmasking (masked positions) and
            # remasking (decoded positions); the two sets are disjoint.
            u = torch.rand(x.shape, dtype=torch.float64, generator=generator, device=x.device)
            if eta > 0:
                sigma_max = 1.0 if alpha_t <= 0 else min(1.0, (1 - alpha_s) / alpha_t)
                sigma = min(eta, sigma_max)
            else:
                sigma = 0.0
            p_unmask = (alpha_s - (1 - sigma) * alpha_t) / (1 - alpha_t)
            unmask = masked & (u < p_unmask)
            remask = ~masked & ~fixed & (u < sigma)
            new_x = _draw_at(x, unmask, logits, mask_id, options, generator)
            new_x = torch.where(remask, torch.full_like(new_x, mask_id), new_x)
            # The logits were computed on the x before this step: still current iff nothing changed.
            logits_current = not bool(unmask.any() or remask.any())
            x = new_x
            steps_run += 1
            bar.update(1)
            if options.progress:  # the count syncs the GPU: only when shown
                bar.set_postfix(nfe=nfe, masked=int((x == mask_id).sum()))
    if (x == mask_id).any():
        # Noise removal: one more denoiser call (unless the cached logits are for this very x),
        # then argmax-fill whatever is still masked.
        if not (use_cache and logits_current):
            logits = denoise(x)
            nfe += 1
        x = fill_masks_greedily(logits, x, mask_id)
    return SampleResult(x, nfe, steps_run)


def ancestral_sample(denoise: Denoiser, canvas: Tensor, fixed: Tensor, mask_id: int, options: SamplerOptions,
                     generator: torch.Generator) -> SampleResult:
    """MDLM ancestral sampler with the skip-when-unchanged cache (MDLM ``ddpm_cache``).

    Reads steps, temperature, top_k, top_p, schedule, schedule_eps, time_eps. NFE <= min(steps, #generated) + 1.
    """
    return grid_sample(denoise, canvas, fixed, mask_id, options, generator, use_cache=True, eta=0.0)


def ancestral_nocache_sample(denoise: Denoiser, canvas: Tensor, fixed: Tensor, mask_id: int,
                             options: SamplerOptions, generator: torch.Generator) -> SampleResult:
    """MDLM ancestral sampler calling the network at every step (MDLM ``ddpm``); same samples as
    ``ancestral_sample`` under the same seed, more NFE. Kept as the honest baseline of the cache."""
    return grid_sample(denoise, canvas, fixed, mask_id, options, generator, use_cache=False, eta=0.0)
