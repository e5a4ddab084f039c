"""Masked (absorbing-state) diffusion: schedules, forward process, SUBS NELBO, samplers.

- ``schedule``: alpha_t (log-linear, cosine) and the NELBO weight -alpha'/(1 - alpha).
- ``masking``: global-batch stratified times, q(x_t | x_0), variable-length cuts.
- ``loss``: SUBS masked-token NLL for training (``diffusion_training_loss``) and evaluation (``diffusion_nll``).
- ``samplers``: the registry (ancestral, ancestral-nocache, first-hitting, confidence, remdm-cap),
  built on a denoiser callable ``x [B, L] -> logits [B, L, V+1]``.
"""
from diffmamba.diffusion.loss import (
    LossTerms, diffusion_loss, diffusion_nll, diffusion_training_loss, masked_diffusion_nll,
)
from diffmamba.diffusion.masking import cut_random_suffixes, eval_times, mask_tokens, stratified_times
from diffmamba.diffusion.samplers import (
    SAMPLERS, Denoiser, SampleResult, SamplerOptions, SamplingError, denoiser_from_model, get_sampler, run_sampler,
)
from diffmamba.diffusion.schedule import CosineSchedule, LogLinearSchedule, NoiseSchedule, make_schedule
