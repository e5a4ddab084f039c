"""Sampler registry: name -> sampler, for the CLI, evaluation and block diffusion.

    from diffmamba.sampling.registry import SamplerOptions, denoiser_from_model, run_sampler
    result = run_sampler("ancestral", denoiser_from_model(model), canvas, fixed, model.mask_token_id,
                         SamplerOptions(steps=128, top_p=0.9), torch.Generator().manual_seed(0))
    result.tokens  # [B, L], no mask;  result.nfe, result.steps

| name | what | reads |
|---|---|---|
| ancestral | MDLM ancestral with the skip-when-unchanged cache | steps, temperature, top_k, top_p |
| ancestral-nocache | the same, one network call per step (same samples under a seed) | same |
| first-hitting | exact, one token per step (steps ignored) | temperature, top_k, top_p |
| confidence | LLaDA top-k confidence with semi-AR blocks | steps, block_length, temperature, top_k, top_p |
| remdm-cap | ReMDM remasking, sigma_t = min(eta, sigma_max) | steps, eta, temperature, top_k, top_p |
| parallel | Fast-dLLM threshold: every position above threshold per step (steps ignored) | threshold, block_length, temperature, top_k, top_p |
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from diffmamba.sampling.ancestral import ancestral_nocache_sample, ancestral_sample
from diffmamba.sampling.base import (
    Denoiser, SampleResult, SamplerOptions, SamplingError, denoiser_from_model,
)
from diffmamba.sampling.confidence import confidence_sample
from diffmamba.sampling.first_hitting import first_hitting_sample
from diffmamba.sampling.parallel import parallel_sample
from diffmamba.sampling.remdm import remdm_cap_sample

Sampler = Callable[[Denoiser, Tensor, Optional[Tensor], int, SamplerOptions, torch.Generator], SampleResult]

SAMPLERS: dict[str, Sampler] = {
    "ancestral": ancestral_sample,
    "ancestral-nocache": ancestral_nocache_sample,
    "first-hitting": first_hitting_sample,
    "confidence": confidence_sample,
    "remdm-cap": remdm_cap_sample,
    "parallel": parallel_sample,
}
UNSTEPPED = ("first-hitting", "parallel")  # samplers that ignore ``options.steps``


def get_sampler(name: str) -> Sampler:
    """The sampler registered as ``name``; a ``SamplingError`` listing the valid names otherwise."""
    if name not in SAMPLERS:
        raise SamplingError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def run_sampler(name: str, denoise: Denoiser, canvas: Tensor, fixed: Optional[Tensor], mask_id: int,
                options: SamplerOptions, generator: torch.Generator) -> SampleResult:
    """Run sampler ``name`` on ``canvas`` [B, L] (``fixed`` [B, L] bool: given tokens). See module table."""
    return get_sampler(name)(denoise, canvas, fixed, mask_id, options, generator)


__all__ = ["SAMPLERS", "Denoiser", "SampleResult", "SamplerOptions", "SamplingError", "denoiser_from_model",
           "get_sampler", "run_sampler"]
