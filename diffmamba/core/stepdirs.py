"""Names of a run's checkpoint folders: ``OUT/checkpoints/step_0001000/`` and the ``latest`` pointer.

One home for them because two layers read them: training writes and resumes them
(``diffmamba/train/checkpoint.py``), and loading a model for ``sample`` / ``eval`` finds the newest one
(``diffmamba/eval/loading.py``) without importing the training stack.
"""
from __future__ import annotations

import os
import re

STEP_DIR = re.compile(r"^step_(\d{7,})$")
LATEST = "latest"


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


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
