"""Training checkpoints: atomic folders, a ``latest`` pointer, validation and rotation.

Layout of ``OUT/checkpoints/step_0001000/``::

    model.safetensors, config.json   DiffMamba.save_pretrained (so from_pretrained(folder) works)
    ema.safetensors                  EMA weights by parameter name (absent when train.ema = 0)
    tokenizer.json                   the run's tokenizer
    run_config.yaml                  the resolved RunConfig
    optimizer.json, .safetensors     AdamW state (diffmamba/core/statefile.py: tensors + JSON structure)
    trainer_state.json               step, data position, EMA update count, metrics window
    rng_state.json, .safetensors     python / numpy / torch (/ cuda) generator states, one per rank
    manifest.json                    size of every file above, written last

Nothing in a checkpoint is a pickle, so resuming a run folder from someone else cannot run code.
Checkpoints of older versions hold ``optimizer.pt`` / ``rng_state.pt`` pickles; those are read with
``torch.load(weights_only=True)`` (tensors, containers and numpy arrays only) or refused.

A folder is filled under a temporary name, every file is fsynced, then it is renamed into place:
a crash leaves either a complete checkpoint or a ``.tmp-*`` folder that is ignored and removed.
``OUT/checkpoints/latest`` is a text file holding the newest folder's name, replaced atomically.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import yaml
from safetensors import safe_open

from diffmamba.core import statefile
from diffmamba.core.errors import UserError
from diffmamba.core.io import replace_tree, write_json, write_text
from diffmamba.core.stepdirs import LATEST, list_checkpoints, step_dir_name  # noqa: F401  (re-exported)

try:  # what numpy arrays in an older version's pickles are rebuilt with (see _load_legacy_pickle)
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
RNG_STATE = "rng_state"  # statefile name: rng_state.json + rng_state.safetensors
OPTIMIZER = "optimizer"  # optimizer.json + optimizer.safetensors
LEGACY_PICKLES = {RNG_STATE: "rng_state.pt", OPTIMIZER: "optimizer.pt"}  # older versions' format
EMA_WEIGHTS = "ema.safetensors"
MODEL_WEIGHTS = "model.safetensors"
RUN_CONFIG = "run_config.yaml"
REQUIRED = (MODEL_WEIGHTS, "config.json", "tokenizer.json", RUN_CONFIG, TRAINER_STATE)
STATES = (OPTIMIZER, RNG_STATE)  # each: the statefile pair, or (older checkpoints) its legacy pickle



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


def restore_saved_rng_state(path: str, state) -> None:
    """restore_rng_state for a state read from checkpoint ``path``: a malformed one is a UserError."""
    try:
        restore_rng_state(state)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise UserError(f"the RNG state in {path} is malformed ({str(e)[:120]}); {_DROP_CHECKPOINT}") from None


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
    safetensors headers and the JSON files parse. Their contents are checked on load, where a
    failure is reported as a UserError."""
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        return "no manifest.json (the checkpoint was not finished)"
    try:
        with open(manifest_path) as f:
            sizes = json.load(f)
    except (OSError, ValueError) as e:
        return f"manifest.json is unreadable ({e})"
    if not isinstance(sizes, dict):
        return "manifest.json is not a JSON object"
    for name in REQUIRED:
        if name not in sizes:
            return f"{name} is missing from the manifest"
    for state in STATES:
        json_file, tensor_file = (os.path.basename(p) for p in statefile.paths(path, state))
        if not ({json_file, tensor_file} <= set(sizes) or LEGACY_PICKLES[state] in sizes):
            return f"{json_file} / {tensor_file} are missing from the manifest"
    for name, size in sizes.items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return f"{name} is missing"
        if os.path.getsize(file) != size:
            return f"{name} has {os.path.getsize(file)} bytes, the manifest says {size}"

    tensor_files = [os.path.basename(statefile.paths(path, state)[1]) for state in STATES]
    for name in (MODEL_WEIGHTS, EMA_WEIGHTS, *tensor_files):
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
    json_files = ["config.json", "tokenizer.json"] + [os.path.basename(statefile.paths(path, s)[0]) for s in STATES]
    for name in json_files + [RUN_CONFIG]:
        if name in sizes:
            try:
                with open(os.path.join(path, name), encoding="utf-8") as f:
                    parsed = json.load(f) if name in json_files else yaml.safe_load(f)
                if not isinstance(parsed, dict):
                    raise ValueError("not a mapping")
            except (OSError, ValueError, RecursionError, yaml.YAMLError) as e:
                return f"{name} is unreadable ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
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
                    "start over with --fresh, or choose another --out")


_DROP_CHECKPOINT = "delete that checkpoint folder to resume from the previous one, or start over with --fresh"


def save_training_state(folder: str, optimizer_state: dict, rng_states: list[dict]) -> None:
    statefile.save_state(optimizer_state, folder, OPTIMIZER)
    statefile.save_state(rng_states, folder, RNG_STATE)


def _load(path: str, state: str):
    if os.path.isfile(statefile.paths(path, state)[0]):
        return statefile.load_state(path, state, _DROP_CHECKPOINT)
    return _load_legacy_pickle(os.path.join(path, LEGACY_PICKLES[state]))


def _load_legacy_pickle(file: str):
    """An older checkpoint's optimizer.pt / rng_state.pt, read without running code: torch's
    weights_only unpickler accepts tensors, containers and (allowed here) numpy arrays, nothing else."""
    allowed = [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, or a pickle that would have to run code
        detail = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise UserError(f"{file} cannot be read safely ({detail}); it is a pickle from an older version or "
                        f"damaged, and is never unpickled unrestricted: {_DROP_CHECKPOINT}") from None


def load_rng_states(path: str) -> list[dict]:
    states = _load(path, RNG_STATE)
    if not isinstance(states, list) or not all(isinstance(s, dict) for s in states):
        raise UserError(f"the RNG state in {path} is not a list of per-process states; {_DROP_CHECKPOINT}")
    return states


def load_optimizer_state(path: str) -> dict:
    state = _load(path, OPTIMIZER)
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) \
            or not isinstance(state.get("param_groups"), list):
        raise UserError(f"the optimizer state in {path} is malformed; {_DROP_CHECKPOINT}")
    return state
