"""First-hitting sampler: exact, one unmask per step (Zheng et al.; BD3-LM ``first_hitting``)."""
from __future__ import annotations

import torch
from torch import Tensor

from diffmamba.sampling.base import Denoiser, SampleResult, SamplerOptions, prepare_canvas, progress_bar
from diffmamba.sampling.categorical import sample_tokens


def first_hitting_sample(denoise: Denoiser, canvas: Tensor, fixed: Tensor, mask_id: int,
                         options: SamplerOptions, generator: torch.Generator) -> SampleResult:
    """First-hitting sampler (Zheng et al.; BD3-LM ``first_hitting``): exact, one unmask per step.

    With m masked tokens at time t, the next unmasking happens at the first hitting time
    t' = t u^{1/m} (log-linear schedule) and concerns a uniformly chosen masked position. The
    denoiser is time-agnostic, so the jump times do not change the law of the sample: each step
    picks one masked position uniformly per row and draws its token from p. ``options.steps`` is
    not used; steps = NFE = the largest number of generated positions in a row.
    """
    x, fixed = prepare_canvas(canvas, fixed, mask_id)
    total = int((x == mask_id).sum(1).max()) if x.numel() else 0
    rows = torch.arange(x.shape[0], device=x.device)
    nfe = 0
    with progress_bar(total, options) as bar:
        for _ in range(total):
            masked = x == mask_id
            active = masked.any(1)  # rows with fewer generated positions finish early
            logits = denoise(x)
            nfe += 1
            scores = torch.rand(x.shape, dtype=torch.float64, generator=generator, device=x.device)
            position = scores.masked_fill(~masked, -1.0).argmax(1)  # uniform among masked
            tokens = sample_tokens(logits[rows, position], mask_id, generator, temperature=options.temperature,
                                   top_k=options.top_k, top_p=options.top_p)
            x = x.clone()
            x[rows[active], position[active]] = tokens[active]
            bar.update(1)
    return SampleResult(x, nfe, total)
