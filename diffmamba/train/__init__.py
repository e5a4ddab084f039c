"""Training: ``train(cfg, out_dir)`` runs the resumable accelerate loop (``loop.Trainer``).

- ``loop``: the ``Trainer`` (one per process): steps, validation, signals, final weights.
- ``batches``: data order as a function of (seed, epoch, position); micro-batch layout.
- ``optim``: AdamW parameter groups, the LR schedule, EMA of the weights.
- ``checkpoint``: atomic checkpoint folders, the ``latest`` pointer, validation and rotation.
- ``runfolder``: start, ``--resume`` or ``--fresh`` in the run folder (no state of it is a dead end).
- ``log`` / ``debug``: metrics.jsonl, MFU; the per-micro-batch debug log.

The loop's names are imported on first use, so ``diffmamba.train.optim`` (``diffmamba bench train``)
does not pay for, or need, Hugging Face ``datasets``.
"""
from __future__ import annotations

import contextlib
import os

from diffmamba.config import RunConfig
from diffmamba.core.errors import UserError
from diffmamba.core.outputs import check_out_dir
from diffmamba.core.runlock import FolderLock

__all__ = ["train", "Trainer", "TrainingDiverged", "TrainingStopped"]
_LOOP_NAMES = ("Trainer", "TrainingDiverged", "TrainingStopped")


def __getattr__(name):
    if name in _LOOP_NAMES:
        from diffmamba.train import loop  # lazy: importing the loop imports Hugging Face datasets
        return getattr(loop, name)
    raise AttributeError(f"module 'diffmamba.train' has no attribute {name!r}")


def train(cfg: RunConfig, out_dir: str, resume: bool = False, show_progress: bool = True,
          debug_batches: bool = False, fresh: bool = False) -> dict:
    """Train as ``cfg`` says, writing into ``out_dir``; returns the final metrics
    (step, loss, val_loss, val_ppl, tokens_per_s, final_dir). See ``diffmamba train --help``.

    The main process holds an exclusive lock on the run folder for the whole run (diffmamba/core/runlock.py):
    a second ``train`` into the same folder stops with one line instead of training beside this one."""
    check_out_dir(out_dir)
    if resume and not os.path.isdir(out_dir):
        raise UserError(f"--resume: no checkpoint in {out_dir} (it does not exist); run without --resume to start a "
                        "new run there, or point --out at the run folder that holds checkpoints/")
    from diffmamba.train.loop import Trainer  # lazy: see the module docstring (datasets)
    main_process = int(os.environ.get("RANK", "0")) == 0
    with FolderLock(out_dir, "training run") if main_process else contextlib.nullcontext():
        trainer = Trainer(cfg, out_dir, resume=resume, show_progress=show_progress, debug_batches=debug_batches,
                          fresh=fresh)
        return trainer.fit()
