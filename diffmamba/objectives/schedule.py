"""Noise schedules of the absorbing-state (masking) forward process.

A token stays clean until time t with probability ``alpha(t)`` and is ``[MASK]`` otherwise;
``alpha`` falls from ~1 at t = 0 to ``eps`` at t = 1 (docs/masked-diffusion.md §1.1).

The continuous-time NELBO weights the masked-token cross-entropy by
``loss_weight(t) = -alpha'(t) / (1 - alpha(t))``, which is exactly ``1 / t`` for the log-linear
schedule (§1.3). Samplers use ``alpha`` on a time grid and ``time_for_mask_prob`` (the inverse of
``1 - alpha``) to jump between masking levels.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor


class NoiseSchedule(ABC):
    """alpha(t) for t in [0, 1]; every method takes and returns tensors of the same shape."""

    name = "base"

    def __init__(self, eps: float = 1e-3) -> None:
        if not 0 <= eps < 1:
            raise ValueError(f"schedule eps must be in [0, 1), got {eps}")
        self.eps = eps

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """The probability that a token is still clean at time t."""

    @abstractmethod
    def alpha_prime(self, t: Tensor) -> Tensor:
        """d alpha / dt (<= 0)."""

    def loss_weight(self, t: Tensor) -> Tensor:
        """-alpha'(t) / (1 - alpha(t)) > 0: the NELBO weight of a masked token's cross-entropy."""
        return -self.alpha_prime(t) / (1 - self.alpha(t))

    def mask_prob(self, t: Tensor) -> Tensor:
        """1 - alpha(t): the probability that a token is masked at time t."""
        return 1 - self.alpha(t)

    @abstractmethod
    def time_for_mask_prob(self, mask_prob: Tensor) -> Tensor:
        """Inverse of ``mask_prob``: the t at which a token is masked with that probability."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps})"


class LogLinearSchedule(NoiseSchedule):
    """alpha_t = 1 - (1 - eps) t: the masking probability is linear in t (MDLM / SEDD default)."""

    name = "loglinear"

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - (1 - self.eps) * t

    def alpha_prime(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(1 - self.eps))

    def loss_weight(self, t: Tensor) -> Tensor:
        # (1 - eps) / ((1 - eps) t) written as 1 / t so the weight has no rounding of its own.
        return 1 / t

    def time_for_mask_prob(self, mask_prob: Tensor) -> Tensor:
        return mask_prob / (1 - self.eps)


class CosineSchedule(NoiseSchedule):
    """alpha_t = eps + (1 - eps) cos(pi t / 2) (MDLM / Duo's cosine)."""

    name = "cosine"

    def alpha(self, t: Tensor) -> Tensor:
        return self.eps + (1 - self.eps) * torch.cos(math.pi * t / 2)

    def alpha_prime(self, t: Tensor) -> Tensor:
        return -(1 - self.eps) * (math.pi / 2) * torch.sin(math.pi * t / 2)

    def loss_weight(self, t: Tensor) -> Tensor:
        # (pi/2) sin(x) / (1 - cos(x)) with x = pi t / 2 equals (pi/2) cot(x / 2): no cancellation
        # in 1 - cos(x) for small t.
        return (math.pi / 2) / torch.tan(math.pi * t / 4)

    def time_for_mask_prob(self, mask_prob: Tensor) -> Tensor:
        return (2 / math.pi) * torch.arccos((1 - mask_prob / (1 - self.eps)).clamp(-1, 1))


SCHEDULES = {"loglinear": LogLinearSchedule, "cosine": CosineSchedule}


def make_schedule(name: str = "loglinear", eps: float = 1e-3) -> NoiseSchedule:
    """Build a schedule by name (``objective.schedule`` in the config)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](eps)
