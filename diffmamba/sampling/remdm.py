"""ReMDM-cap remasking (docs/masked-diffusion.md §2.5) on the ancestral time grid.

A remasking probability sigma_t = min(eta, sigma_max), sigma_max = min(1, (1 - alpha_s) / alpha_t):
a decoded (non-fixed) token is remasked with probability sigma_t and a masked one unmasks with
probability (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t). eta = 0 is exactly MDLM ancestral.
"""
from __future__ import annotations

import torch
from torch import Tensor

from diffmamba.sampling.ancestral import grid_sample
from diffmamba.sampling.base import Denoiser, SampleResult, SamplerOptions


def remdm_cap_sample(denoise: Denoiser, canvas: Tensor, fixed: Tensor, mask_id: int, options: SamplerOptions,
                     generator: torch.Generator) -> SampleResult:
    """ReMDM with the "cap" schedule sigma_t = min(eta, sigma_max) (reads ``options.eta``).

    Decoded tokens may be remasked and redrawn (never fixed ones); more steps than tokens keep
    improving quality. The cache rarely fires because tokens keep changing, but stays exact.
    """
    return grid_sample(denoise, canvas, fixed, mask_id, options, generator, use_cache=True, eta=options.eta)
