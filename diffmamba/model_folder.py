"""Where the weights are in a path a user hands us, and loading them with one-line errors.

    model_dir = find_model_dir("runs/demo-ar")   # the folder itself, its final/, or the newest step folder
    model = load_model_folder(model_dir)         # DiffMamba.from_pretrained; damaged files -> UserError

Two layers need this: training (``train.init_from``) and evaluation / sampling
(``diffmamba/eval/loading.py``), so it lives below both.
"""
from __future__ import annotations

import os
from typing import Optional

from diffmamba.core.errors import UserError
from diffmamba.core.stepdirs import LATEST, list_checkpoints
from diffmamba.model import CONFIG_NAME, WEIGHTS_NAME, DiffMamba

MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME)


def has_model(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, f)) for f in MODEL_FILES)


def find_model_dir(path: str, must_exist: bool = True) -> Optional[str]:
    """The folder with the weights: ``path`` itself, ``path/final``, or the newest ``path/checkpoints/step_*``."""
    candidates = [path, os.path.join(path, "final")]
    latest = os.path.join(path, "checkpoints", LATEST)
    if os.path.isfile(latest):
        with open(latest, encoding="utf-8", errors="replace") as f:
            candidates.append(os.path.join(path, "checkpoints", os.path.basename(f.read().strip())))
    # A dangling or damaged `latest` falls back to the newest step_<N> folder holding a model.
    candidates += [folder for _, folder in reversed(list_checkpoints(os.path.join(path, "checkpoints")))]
    for c in candidates:
        if os.path.isdir(c) and has_model(c):
            return c
    if not must_exist:
        return None
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path} does not exist; pass a run folder from `diffmamba train` "
                        "(its final/ is used) or a folder holding config.json + model.safetensors")
    raise UserError(f"no model in {path} (looked for {' + '.join(MODEL_FILES)} there, in final/ and in "
                    "checkpoints/latest); pass a run folder or a folder written by save_pretrained")


def load_model_folder(model_dir: str) -> DiffMamba:
    """DiffMamba.from_pretrained, with damaged files reported as one line naming them."""
    try:
        return DiffMamba.from_pretrained(model_dir)
    except UserError:
        raise
    except Exception as e:  # safetensors / json / shape errors of a truncated, empty or foreign file
        detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UserError(f"cannot load the model in {model_dir} ({type(e).__name__}: {detail}); its "
                        "model.safetensors / config.json are damaged or from another program: use an intact "
                        "checkpoint (e.g. another checkpoints/step_* folder of the run)") from None
