"""`diffmamba sample --mode block` end to end on tiny freshly initialised checkpoints."""
import json
import os

import pytest

from diffmamba.cli import main
from diffmamba.config import DataConfig, ObjectiveConfig
from diffmamba.data.tokenizer import train_bpe

from checkpoint_helpers import write_checkpoint

TEXTS = ["The cat sat on the mat. The dog sat on the log."] * 40 + ["A quick brown fox jumps over a lazy dog."] * 40


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_block_cli")
    tokenizer = train_bpe(TEXTS, vocab_size=300, show_progress=False)
    block = write_checkpoint(str(root / "block"), tokenizer, DataConfig(seq_len=64),
                             ObjectiveConfig(name="block_diffusion", block_size=8), max_seq_len=64)
    diffusion = write_checkpoint(str(root / "diffusion"), tokenizer, DataConfig(seq_len=64),
                                 ObjectiveConfig(name="diffusion"), max_seq_len=64)
    return {"block": block, "diffusion": diffusion}


def sample(capsys, *argv):
    code = main(["sample", "--no-progress", "--device", "cpu", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_block_mode_uses_the_trained_block_size_and_is_seeded(checkpoints, capsys, tmp_path):
    output = tmp_path / "samples.jsonl"
    argv = ["--checkpoint", checkpoints["block"], "--mode", "block", "--prompt", "The cat", "--length", "20",
            "--num-samples", "2", "--sampler", "first-hitting", "--seed", "1", "--stats", "--output", str(output)]
    code, out, err = sample(capsys, *argv)
    assert code == 0 and "note" not in err, err
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 2 and all(r["text"].startswith("The cat") for r in records)
    assert records[0]["block_size"] == 8 and records[0]["mode"] == "block" and records[0]["sampler"] == "first-hitting"
    assert all(len(r["tokens"]) == 20 for r in records)
    code, again, _ = sample(capsys, *argv[:-2])
    assert code == 0 and [line for line in again.splitlines() if not line.startswith("stats:")] == [
        line for line in out.splitlines() if not line.startswith("stats:")]


def test_a_checkpoint_not_trained_for_blocks_gets_a_note_or_needs_a_block_size(checkpoints, capsys):
    code, out, err = sample(capsys, "--checkpoint", checkpoints["diffusion"], "--mode", "block", "--block-size", "4",
                            "--length", "12", "--steps", "2")
    assert code == 0 and "not block_diffusion" in err and "--objective block_diffusion" in err
    code, _, err = sample(capsys, "--checkpoint", checkpoints["diffusion"], "--mode", "block")
    assert code == 2 and "--mode block needs --block-size N" in err
    code, _, err = sample(capsys, "--checkpoint", checkpoints["block"], "--mode", "block", "--block-size", "4",
                          "--length", "12", "--steps", "2")
    assert code == 0 and "trained with block size 8" in err


@pytest.mark.parametrize("argv, message", [
    (["--mode", "block", "--block-size", "0"], "--block-size must be >= 1"),
    (["--block-size", "4"], "--block-size applies to --mode block"),
    (["--mode", "block", "--prompt", "The cat sat on the mat. " * 30, "--length", "300"], "more than the model's context of 64"),
])
def test_bad_input_is_one_error_line_and_exit_2(checkpoints, capsys, argv, message):
    code, _, err = sample(capsys, "--checkpoint", checkpoints["block"], *argv)
    errors = [line for line in err.strip().splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and message in errors[0], err
    assert errors[0].startswith("diffmamba sample: error: ")
