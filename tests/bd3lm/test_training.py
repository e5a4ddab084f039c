"""block_diffusion through the real training loop: steps, validation, checkpoints, resume, CLI errors."""
import json
import math
import os

import pytest

from block_helpers import micro_run_overrides
from diffmamba.cli import main as cli_main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = "a block of text is masked and the state of the scan carries the clean prefix to the next block".split()


@pytest.fixture(scope="module")
def micro_run_args(tmp_path_factory):
    """Overrides for a micro run (1 layer, 32 tokens) on a small pseudo-English corpus."""
    return micro_run_overrides(tmp_path_factory.mktemp("block-train"), WORDS, objective__name="block_diffusion",
                               objective__block_size=8)


def train_command(out, overrides, *options):
    """``diffmamba train`` argv: options first, KEY=VALUE overrides last (one positional list)."""
    return ["train", "--out", out, "--config", os.path.join(REPO, "configs", "tiny.yaml"), "--no-progress",
            *options, *overrides]


def test_train_evaluate_checkpoint_and_resume(micro_run_args, tmp_path):
    out = str(tmp_path / "run")
    assert cli_main(train_command(out, [*micro_run_args, "train.eval_every=2", "train.save_every=2"],
                                  "--max-steps", "2")) == 0
    assert cli_main(["train", "--out", out, "--resume", "--max-steps", "3", "--no-progress"]) == 0
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in losses)
    assert any("val_loss" in r and math.isfinite(r["val_loss"]) for r in records)
    with open(os.path.join(out, "config.yaml")) as f:
        assert "block_diffusion" in f.read()


def test_a_block_size_that_does_not_divide_the_length_names_the_divisors(micro_run_args, tmp_path, capsys):
    code = cli_main(train_command(str(tmp_path / "x"), [*micro_run_args, "objective.block_size=5"]))
    err = capsys.readouterr().err
    assert code == 2 and "does not divide data.seq_len = 32" in err and "1, 2, 4, 8, 16, 32" in err
    assert len(err.strip().splitlines()) == 1
