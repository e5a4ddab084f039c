"""Training checkpoints: atomic folders, a ``latest`` pointer, validation and rotation.

Layout of ``OUT/checkpoints/step_0001000/``::

    model.safetensors, config.json   DiffMamba.save_pretrained (so from_pretrained(folder) works)
    ema.safetensors                  EMA weights by parameter name (absent when train.ema = 0)
    tokenizer.json                   the run's tokenizer
    run_config.yaml                  the resolved RunConfig
    optimizer.pt                     AdamW state
    trainer_state.json               step, data position, EMA update count, metrics window
    rng_state.pt                     python / numpy / torch (/ cuda) generator states, one per rank
    manifest.json                    size of every file above, written last

A folder is filled under a temporary name, every file is fsynced, then it is renamed into place:
a crash leaves either a complete checkpoint or a ``.tmp-*`` folder that is ignored and removed.
``OUT/checkpoints/latest`` is a text file holding the newest folder's name, replaced atomically.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from safetensors import safe_open

from diffmamba.core.errors import UserError
from diffmamba.core.io import replace_tree, write_json, write_text

STEP_DIR = re.compile(r"^step_(\d{7,})$")
LATEST = "latest"
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
RNG_STATE = "rng_state.pt"
OPTIMIZER = "optimizer.pt"
EMA_WEIGHTS = "ema.safetensors"
MODEL_WEIGHTS = "model.safetensors"
RUN_CONFIG = "run_config.yaml"
REQUIRED = (MODEL_WEIGHTS, "config.json", "tokenizer.json", RUN_CONFIG, OPTIMIZER, TRAINER_STATE, RNG_STATE)


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


# ------------------------------------------------------------------------------------------ RNG


def capture_rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ------------------------------------------------------------------------------------------ writing


def save_checkpoint(root: str, step: int, write_files: Callable[[str], None], keep_last: int) -> str:
    """Create ``root/step_XXXXXXX`` atomically: ``write_files(folder)`` fills a temporary folder,
    a manifest of file sizes is added, everything is fsynced and the folder renamed into place.
    Then ``root/latest`` is pointed at it and all but the newest ``keep_last`` checkpoints removed.
    Returns the checkpoint's path."""
    os.makedirs(root, exist_ok=True)
    name = step_dir_name(step)
    final = os.path.join(root, name)
    tmp = os.path.join(root, f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    write_files(tmp)
    files = sorted(f for f in os.listdir(tmp) if not f.startswith("."))
    write_json(os.path.join(tmp, MANIFEST), {f: os.path.getsize(os.path.join(tmp, f)) for f in files})
    replace_tree(tmp, final)  # an existing folder of the same step (a run resumed at its end) is replaced
    write_latest_pointer(root, name)
    prune_checkpoints(root, keep_last, keep=name)
    return final


def write_latest_pointer(root: str, name: str) -> None:
    write_text(os.path.join(root, LATEST), name + "\n", durable=True)


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """(step, path) of every ``step_*`` folder under root, oldest first (validity not checked)."""
    if not os.path.isdir(root):
        return []
    found = []
    for entry in os.listdir(root):
        match = STEP_DIR.match(entry)
        if match and os.path.isdir(os.path.join(root, entry)):
            found.append((int(match.group(1)), os.path.join(root, entry)))
    return sorted(found)


def prune_checkpoints(root: str, keep_last: int, keep: str) -> None:
    """Remove all but the newest ``keep_last`` checkpoints (never ``keep``), and temp folders left by
    a crash (only the main process writes checkpoints, and its own temp folder is renamed by now)."""
    checkpoints = list_checkpoints(root)
    for _, path in checkpoints[:-keep_last]:
        if os.path.basename(path) != keep:
            shutil.rmtree(path, ignore_errors=True)
    for entry in os.listdir(root):
        if entry.startswith(".tmp-") and os.path.isdir(os.path.join(root, entry)):
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


# ------------------------------------------------------------------------------------------ reading


def checkpoint_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be resumed from, or None if it looks complete and readable.

    Checks that every required file is there with the size the manifest recorded, and that the
    safetensors headers and the trainer state parse. It does not unpickle the optimizer (that
    happens on load, where a failure is reported the same way)."""
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        return "no manifest.json (the checkpoint was not finished)"
    try:
        with open(manifest_path) as f:
            sizes = json.load(f)
    except (OSError, ValueError) as e:
        return f"manifest.json is unreadable ({e})"
    for name in REQUIRED:
        if name not in sizes:
            return f"{name} is missing from the manifest"
    for name, size in sizes.items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return f"{name} is missing"
        if os.path.getsize(file) != size:
            return f"{name} has {os.path.getsize(file)} bytes, the manifest says {size}"

    for name in (MODEL_WEIGHTS, EMA_WEIGHTS):
        if name in sizes:
            try:
                with safe_open(os.path.join(path, name), framework="pt") as f:
                    list(f.keys())
            except Exception as e:  # safetensors raises its own error types for bad headers
                return f"{name} is not a valid safetensors file ({e})"
    try:
        with open(os.path.join(path, TRAINER_STATE)) as f:
            state = json.load(f)
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{TRAINER_STATE} is unreadable ({e})"
    return None


@dataclass
class Resumable:
    path: str
    trainer_state: dict


def find_resumable(root: str) -> Resumable:
    """The newest complete checkpoint under ``root``; broken ones are skipped with a warning.

    Raises UserError when there is none: resuming from nothing would silently start over."""
    checkpoints = list_checkpoints(root)
    if not checkpoints:
        raise UserError(f"--resume: no checkpoint in {root}; run without --resume to start a new run there, "
                        "or point --out at the run folder that holds checkpoints/")
    for _, path in reversed(checkpoints):
        problem = checkpoint_problem(path)
        if problem is None:
            with open(os.path.join(path, TRAINER_STATE)) as f:
                return Resumable(path, json.load(f))
        warnings.warn(f"skipping checkpoint {path}: {problem}; trying the previous one", stacklevel=2)
    raise UserError(f"--resume: every checkpoint in {root} is incomplete or corrupt (see the warnings above); "
                    "start a new run (remove the folder or choose another --out)")


def load_rng_states(path: str) -> list[dict]:
    # Our own file holding Python/numpy generator states (tuples and arrays), hence weights_only=False.
    return torch.load(os.path.join(path, RNG_STATE), weights_only=False)


def load_optimizer_state(path: str) -> dict:
    try:
        return torch.load(os.path.join(path, OPTIMIZER), map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign pickle: say which file and what to do
        raise UserError(f"{os.path.join(path, OPTIMIZER)} cannot be read ({e}); delete that checkpoint folder "
                        "to resume from the previous one") from None
