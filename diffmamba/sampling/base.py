"""What every iterative-refinement sampler shares: the denoiser interface, options, result, canvas
preparation and the final noise-removal step.

A sampler never sees a model. It sees a **denoiser**::

    denoise(x: LongTensor[B, L]) -> logits [B, L, V+1]     # x holds mask_id where masked

plus the mask id. ``denoiser_from_model(model)`` builds one from a ``DiffMamba``; the
block-diffusion sampler passes its own (one block, scanned from cached prefix states). Denoisers
are time-agnostic (no time conditioning, docs/masked-diffusion.md §5), which is what makes the
skip-the-network-when-nothing-changed cache exact.

Every sampler has the signature ``sampler(denoise, canvas, fixed, mask_id, options, generator)``:
``canvas`` [B, L] holds the given tokens where ``fixed`` [B, L] is True (prompt prefix, infilling
context, anywhere); the other positions are generated. Samplers never change a fixed token, never
change a committed token (except ReMDM remasking, by design), end with no mask, count the network
evaluations they actually make, and draw all randomness from ``generator``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffmamba.core.errors import UserError
from diffmamba.sampling.categorical import clean_distribution

Denoiser = Callable[[Tensor], Tensor]


class SamplingError(UserError, ValueError):
    """A bad sampler argument; the message names the option and the fix."""


@dataclass(frozen=True)
class SamplerOptions:
    """Knobs of the samplers; each sampler documents which ones it reads.

    steps: refinement steps (ancestral / remdm time grid; confidence budget; ignored by
        first-hitting, which makes exactly one step per generated token).
    temperature, top_k, top_p: applied to the clean-token distribution (temperature 0 = greedy).
    block_length: confidence sampler's semi-AR block length (0 = one block).
    eta: ReMDM-cap remasking cap, sigma_t = min(eta, sigma_max).
    threshold: parallel sampler: commit every masked position whose confidence exceeds it (and
        always the most confident one), in (0, 1]; 1 = one token per step.
    schedule, schedule_eps: noise schedule of the time grid (log-linear, eps = 1e-3, as trained).
    time_eps: last time of the grid linspace(1, time_eps, steps + 1).
    progress: show a tqdm bar over steps; progress_desc labels it.
    cuda_graph: replay the mode's network calls from CUDA graphs: the AR step, the diffusion or
        block denoiser, speculative decoding's draft and scoring calls (``diffmamba.sampling.graphs``).
    """

    steps: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    block_length: int = 0
    eta: float = 0.008
    threshold: float = 0.9
    schedule: str = "loglinear"
    schedule_eps: float = 1e-3
    time_eps: float = 1e-5
    progress: bool = False
    progress_desc: str = "sampling"
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise SamplingError(f"steps must be >= 1, got {self.steps}; pass --steps 1 or more")
        if self.temperature < 0:
            raise SamplingError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise SamplingError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}; e.g. --top-p 0.9 (1 = off)")
        if self.block_length < 0:
            raise SamplingError(f"block_length must be >= 0 (0 = one block), got {self.block_length}")
        if not 0 <= self.eta <= 1:
            raise SamplingError(f"eta must be in [0, 1], got {self.eta}; ReMDM uses about 0.008")
        if not 0 < self.threshold <= 1:
            raise SamplingError(f"threshold must be in (0, 1], got {self.threshold}; e.g. --threshold 0.9 "
                                "(1 = one token per step)")
        if not 0 < self.time_eps < 1:
            raise SamplingError(f"time_eps must be in (0, 1), got {self.time_eps}")


@dataclass
class SampleResult:
    """tokens: [B, L] int64 with no mask; nfe: denoiser (or model) calls made; steps: loop steps run."""

    tokens: Tensor
    nfe: int
    steps: int


def denoiser_from_model(model, mode: str = "diffusion") -> Denoiser:
    """Wrap a ``DiffMamba`` as a denoiser: ``x [B, L] -> model(x, mode)`` without autograd."""

    def denoise(x: Tensor) -> Tensor:
        with torch.no_grad():
            return model(x, mode=mode)

    return denoise


def prepare_canvas(canvas: Tensor, fixed: Optional[Tensor], mask_id: int) -> tuple[Tensor, Tensor]:
    """Validate inputs and return (x, fixed): x = canvas with every non-fixed position masked.

    canvas: [B, L] int64. fixed: [B, L] bool or None (= nothing fixed: unconditional).
    """
    if canvas.dim() != 2:
        raise ValueError(f"canvas must be [B, L] token ids, got shape {tuple(canvas.shape)}")
    if fixed is None:
        fixed = torch.zeros_like(canvas, dtype=torch.bool)
    if fixed.shape != canvas.shape or fixed.dtype != torch.bool:
        raise ValueError(f"fixed must be a bool tensor of the canvas shape {tuple(canvas.shape)}, "
                         f"got {fixed.dtype} {tuple(fixed.shape)}")
    if (canvas[fixed] == mask_id).any():
        raise ValueError("a fixed position holds the mask id; fixed positions must hold real tokens")
    x = torch.where(fixed, canvas, torch.full_like(canvas, mask_id))
    return x, fixed


def fill_masks_greedily(logits: Tensor, x: Tensor, mask_id: int) -> Tensor:
    """Noise removal: every remaining mask takes the argmax clean token of ``logits`` [B, L, V+1]."""
    masked = x == mask_id
    if not masked.any():
        return x
    best = clean_distribution(logits[masked], mask_id, temperature=0).argmax(-1)
    x = x.clone()
    x[masked] = best
    return x


def progress_bar(total: int, options: SamplerOptions):
    """A tqdm bar over sampler steps (disabled unless ``options.progress``)."""

    return tqdm(total=total, desc=options.progress_desc, disable=not options.progress, leave=False,
                dynamic_ncols=True)
