"""What ``train`` does with the run folder it is given: start, continue (``--resume``) or start over
(``--fresh``), so that no state of the folder is a dead end.

    empty / missing folder          start (``--resume``: error, the path is probably a typo)
    a run without any checkpoint    start over with a note (it stopped before its first save: a NaN
                                    at step 2, a kill in the first minutes); with or without --resume
    a run with checkpoints          ``--resume`` continues from the newest valid one; ``--fresh``
                                    deletes the run's outputs and starts over; neither: error naming both
"""
from __future__ import annotations

import os
import shutil
from typing import Optional

from diffmamba.core.errors import UserError
from diffmamba.train import checkpoint as ckpt

# Everything `train` writes into a run folder (what --fresh removes; other files are left alone).
RUN_OUTPUTS = ("checkpoints", "final", "final.tmp", "metrics.jsonl", "config.yaml", "tensorboard", "debug")


def _is_run_output(entry: str) -> bool:
    """One of RUN_OUTPUTS, or the temporary file a crash left while one was written
    (core.io.temporary_name: ``.NAME.tmp<pid>``)."""
    return entry in RUN_OUTPUTS or any(entry.startswith(f".{name}.tmp") for name in RUN_OUTPUTS)


def clear_run_outputs(out_dir: str) -> None:
    for name in sorted(os.listdir(out_dir)):
        if not _is_run_output(name):
            continue
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def prepare_run_folder(out_dir: str, resume: bool, fresh: bool, is_main: bool) -> Optional[ckpt.Resumable]:
    """The checkpoint to resume from, or None to start at step 0 (after clearing what a dead run left,
    on the main process). Raises UserError for the combinations that need the user's decision."""
    if fresh and resume:
        raise UserError("--fresh (delete the run and start over) and --resume (continue it) contradict each "
                        "other; pass one of them")
    root = os.path.join(out_dir, "checkpoints")
    has_checkpoint = bool(ckpt.list_checkpoints(root))
    started = has_checkpoint or os.path.exists(os.path.join(out_dir, "config.yaml"))
    if fresh:
        if is_main and started:
            print(f"--fresh: deleting the run in {out_dir} (checkpoints, final/, metrics) and starting over")
            clear_run_outputs(out_dir)
        return None
    if has_checkpoint:
        if resume:
            found = ckpt.find_resumable(root)
            if is_main:
                print(f"resuming from {found.path}")
            return found
        raise UserError(f"{out_dir} already holds a run; pass --resume to continue it, --fresh to delete it and "
                        "start over, or choose another --out")
    if not is_main:
        return None  # the main process decides (and may be clearing the folder right now)
    if started:
        print(f"{out_dir} holds a run that stopped before its first checkpoint; starting it over from step 0")
        clear_run_outputs(out_dir)
        return None
    if resume:
        raise UserError(f"--resume: no checkpoint in {root}; run without --resume to start a new run there, "
                        "or point --out at the run folder that holds checkpoints/")
    return None
