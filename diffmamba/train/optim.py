"""Optimiser pieces of the training loop: AdamW parameter groups, the learning-rate schedule and
the EMA copy of the weights.

The schedule is a pure function of the step (``lr_at``), so resuming needs only the step count:
there is no scheduler object whose state could drift from the checkpoint.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from diffmamba.config import TrainConfig

def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decayed matrices, and everything else without decay.

    The model decides when it can (``DiffMamba.optimizer_groups``: decay on projection and
    embedding matrices only, never on norms, biases, dt_bias, D or the MIMO vectors; pulling the
    SSM's time-step bias or skip towards zero changes the dynamics, not the capacity). Any other
    module: parameters with 2+ dimensions decay, vectors and scalars do not. Tied parameters appear once.
    """
    if hasattr(model, "optimizer_groups"):
        groups = model.optimizer_groups(weight_decay)
    else:
        params = list(dict.fromkeys(p for p in model.parameters() if p.requires_grad))  # unique, in order
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # fused AdamW is one kernel for all parameters on CUDA; the for-each path is the fast one on CPU.
    fused = all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                             eps=cfg.adam_eps, fused=fused or None)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up from lr/warmup to lr, then
    constant or cosine decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    decay_steps = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class EMA:
    """Exponential moving average of the trainable parameters, kept in float32.

    Not ``torch.optim.swa_utils.AveragedModel``: that deep-copies the whole module (a DDP/FSDP
    wrapper included, which FSDP does not support), averages in the module's own dtype and keeps
    its own ``n_averaged`` buffer; checkpoints store this EMA as ``ema.safetensors`` by parameter
    name plus ``num_updates`` in trainer_state.json, and the swap in/out must restore the training
    weights bit for bit. A flat list of float32 tensors and one ``_foreach_lerp_`` does all that.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (as in MDLM's EMA):
    with a fixed 0.9999 a run shorter than ~10k steps would evaluate weights close to the random
    initialisation. Buffers are not averaged (the model's buffers are constants).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.params = [p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        live = [p.detach().float() for p in model.parameters() if p.requires_grad]
        torch._foreach_lerp_(self.params, live, 1.0 - self.current_decay())
        self.num_updates += 1

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[None]:
        """Run the body with the EMA weights in ``model``; the training weights come back afterwards,
        bit for bit (they are kept aside, not recomputed)."""
        live = [p for p in model.parameters() if p.requires_grad]
        backup = [p.detach().clone() for p in live]
        with torch.no_grad():
            for p, e in zip(live, self.params):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(live, backup):
                    p.copy_(b)

    @torch.no_grad()
    def load_from(self, model: nn.Module, full_state_dict: dict[str, torch.Tensor], num_updates: int) -> None:
        """Take the EMA from a full (unsharded) model state dict, as checkpoints store it. It is
        loaded into ``model`` (DDP/FSDP aware) and read back, then the training weights return."""

        live = [p for p in model.parameters() if p.requires_grad]
        backup = [p.detach().clone() for p in live]
        set_model_state_dict(model, full_state_dict, options=StateDictOptions(full_state_dict=True))
        for e, p, b in zip(self.params, live, backup):
            e.copy_(p.detach().float())
            p.copy_(b)
        self.num_updates = num_updates
