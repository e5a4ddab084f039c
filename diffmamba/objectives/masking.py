"""The forward (noising) process: diffusion times, absorbing-state masking, variable lengths.

Time sampling follows Duo (docs/masked-diffusion.md §1.4): one draw of ``n = global batch``
uniforms per optimizer step, made low-discrepancy as ``(u_i + i) / n`` (exactly one sample per
stratum ``[i/n, (i+1)/n)``), shuffled, then sliced by process rank and accumulation step, so the
strata tile [0, 1) exactly once per global batch instead of once per micro-batch.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from diffmamba.objectives.schedule import NoiseSchedule


def stratified_times(
    local_batch_size: int,
    rank: int,
    world_size: int,
    accum_step: int,
    num_accum_steps: int,
    generator: torch.Generator,
    *,
    antithetic: bool = True,
    sampling_eps: float = 1e-3,
    device: Optional[torch.device | str] = None,
) -> Tensor:
    """Diffusion times for this process's micro-batch, stratified over the global batch.

    Args:
        local_batch_size: sequences in this process's micro-batch (b).
        rank, world_size: this process's index and the number of processes.
        accum_step, num_accum_steps: index of this micro-batch within the optimizer step, and
            the number of micro-batches per optimizer step.
        generator: a CPU generator seeded **identically on every rank** and used only here. It
            advances once per optimizer step (after the last accumulation step), so every rank
            and every micro-batch of one optimizer step sees the same global draw.
        antithetic: stratify (True) or draw plain uniforms (False); both slice one global draw,
            so different ranks never repeat each other's times.
        sampling_eps: t is mapped to ``(1 - sampling_eps) t + sampling_eps`` to avoid t = 0.

    Returns:
        t: [b] float32 in [sampling_eps, 1).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size = {world_size}), got {rank}")
    if not 0 <= accum_step < num_accum_steps:
        raise ValueError(f"accum_step must be in [0, num_accum_steps = {num_accum_steps}), got {accum_step}")
    if local_batch_size < 1:
        raise ValueError(f"local_batch_size must be >= 1, got {local_batch_size}")
    n = local_batch_size * world_size * num_accum_steps
    start_state = generator.get_state()
    u = torch.rand(n, dtype=torch.float64, generator=generator)
    if antithetic:
        u = (u + torch.arange(n, dtype=torch.float64)) / n
        # Shuffle so that no rank or accumulation step is stuck with the low (or high) strata.
        u = u[torch.randperm(n, generator=generator)]
    if accum_step < num_accum_steps - 1:
        # Replay the same global draw for the remaining micro-batches of this optimizer step.
        generator.set_state(start_state)
    start = (rank * num_accum_steps + accum_step) * local_batch_size
    t = u[start:start + local_batch_size]
    t = (1 - sampling_eps) * t + sampling_eps
    return t.to(device=device, dtype=torch.float32)


def eval_times(
    batch_size: int, generator: torch.Generator, *, antithetic: bool = True, sampling_eps: float = 1e-3,
    device: Optional[torch.device | str] = None,
) -> Tensor:
    """Times for one evaluation batch: stratified over the batch (antithetic) or plain uniform. [b]"""
    return stratified_times(batch_size, 0, 1, 0, 1, generator, antithetic=antithetic,
                            sampling_eps=sampling_eps, device=device)


def mask_tokens(
    x0: Tensor, t: Tensor, schedule: NoiseSchedule, mask_id: int, generator: Optional[torch.Generator] = None,
    valid_mask: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Sample x_t ~ q(x_t | x_0): each valid token becomes ``mask_id`` with probability 1 - alpha_t.

    Args:
        x0: [B, L] clean token ids. t: [B] times, or [B, L] one time per token (block diffusion).
            valid_mask: [B, L] bool (padding = False; padding is never masked).
            generator: on x0's device, or None for the global RNG.

    Returns:
        xt: [B, L] ids with masks; masked: [B, L] bool, True where xt == mask_id.
    """
    mask_prob = schedule.mask_prob(t.to(torch.float64))
    if mask_prob.dim() == 1:
        mask_prob = mask_prob[:, None]
    u = torch.rand(x0.shape, dtype=torch.float64, generator=generator, device=x0.device)
    masked = u < mask_prob.to(x0.device)
    if valid_mask is not None:
        masked &= valid_mask
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def cut_random_suffixes(
    valid_mask: Tensor, prob: float, generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Variable-length training (LLaDA; mdlm#35): with probability ``prob`` per sequence, keep a
    random prefix of length L' ~ U{1, ..., L} and mark the rest invalid (padding).

    Args:
        valid_mask: [B, L] bool. generator: on valid_mask's device, or None.

    Returns:
        [B, L] bool: ``valid_mask`` with the cut suffixes set to False.
    """
    if prob <= 0:
        return valid_mask
    b, length = valid_mask.shape
    device = valid_mask.device
    cut = torch.rand(b, generator=generator, device=device) < prob
    new_length = torch.randint(1, length + 1, (b,), generator=generator, device=device)
    keep = torch.arange(length, device=device)[None, :] < new_length[:, None]
    return valid_mask & (keep | ~cut[:, None])
