"""Training: ``train(cfg, out_dir)`` runs the resumable accelerate loop (``loop.Trainer``).

- ``loop``: the ``Trainer`` (one per process): steps, validation, signals, final weights.
- ``batches``: data order as a function of (seed, epoch, position); micro-batch layout.
- ``optim``: AdamW parameter groups, the LR schedule, EMA of the weights.
- ``checkpoint``: atomic checkpoint folders, the ``latest`` pointer, validation and rotation.
- ``log`` / ``debug``: metrics.jsonl, MFU; the per-micro-batch debug log.
"""
from __future__ import annotations

from diffmamba.config import RunConfig
from diffmamba.train.loop import Trainer, TrainingDiverged, TrainingStopped

__all__ = ["train", "Trainer", "TrainingDiverged", "TrainingStopped"]


def train(cfg: RunConfig, out_dir: str, resume: bool = False, show_progress: bool = True,
          debug_batches: bool = False) -> dict:
    """Train as ``cfg`` says, writing into ``out_dir``; returns the final metrics
    (step, loss, val_loss, val_ppl, tokens_per_s, final_dir). See ``diffmamba train --help``."""
    trainer = Trainer(cfg, out_dir, resume=resume, show_progress=show_progress, debug_batches=debug_batches)
    return trainer.fit()
