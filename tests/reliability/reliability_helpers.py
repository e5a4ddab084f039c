"""Helpers of the reliability tests (a module of its own: every test folder has a ``conftest``, and
`from conftest import` would pick whichever was imported first). The micro corpus and model config
are the training tests' (tests/train/train_helpers.py)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "train"))

from train_helpers import TINY_CONFIG, micro_overrides, write_corpus  # noqa: E402,F401


def train_command(out: str, micro_data, *extra) -> list[str]:
    return ["train", "--config", TINY_CONFIG, "--out", out, "--no-progress",
            *micro_overrides(micro_data, max_steps=2, ema=0.9), *extra]


def checkpoint_dir(out: str) -> str:
    return os.path.join(out, "checkpoints", "step_0000002")


def error_lines(err: str) -> list[str]:
    """The error lines of a failed command; a traceback fails the test."""
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if "error:" in line]
