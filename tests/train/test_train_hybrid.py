"""Training, resume and evaluation of attention and hybrid trunks (``model.layer_pattern``)."""
import json
import os

import pytest

from diffmamba.cli import main as cli_main
from diffmamba.config import RunConfig, load_config
from diffmamba.train import train

from train_helpers import TINY_CONFIG, micro_overrides


def overrides(tiny_data, pattern, objective, **train_options):
    return micro_overrides(tiny_data, lr_schedule="constant", **train_options) + [
        "model.n_layers=2", f"model.layer_pattern={pattern}", "model.attn_headdim=16", "model.attn_kv_heads=1",
        f"objective.name={objective}", "objective.block_size=8"]


def losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


@pytest.mark.parametrize("pattern, objective", [("MA", "block_diffusion"), ("A", "diffusion")])
def test_resume_continues_a_hybrid_run_exactly(tiny_data, tmp_path, pattern, objective):
    straight = str(tmp_path / "straight")
    train(load_config(RunConfig, TINY_CONFIG, overrides(tiny_data, pattern, objective, max_steps=4, save_every=2)),
          straight, show_progress=False)
    stopped = str(tmp_path / "stopped")
    train(load_config(RunConfig, TINY_CONFIG, overrides(tiny_data, pattern, objective, max_steps=2, save_every=2)),
          stopped, show_progress=False)
    assert cli_main(["train", "--out", stopped, "--resume", "--max-steps", "4", "--no-progress"]) == 0
    want, got = losses(straight), losses(stopped)
    assert [s for s, _ in got] == [1, 2, 3, 4]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-6)
    with open(os.path.join(stopped, "final", "config.json")) as f:
        assert json.load(f)["model"]["layer_pattern"] == pattern
