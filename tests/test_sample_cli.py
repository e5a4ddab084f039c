"""`diffmamba sample` end to end on a tiny freshly initialised checkpoint, and its bad-input errors."""
import json
import os
import subprocess
import sys

import pytest
import torch

from diffmamba.cli import main
from diffmamba.config import ModelConfig
from diffmamba.data.tokenizer import train_bpe
from diffmamba.model import DiffMamba

TEXTS = ["The cat sat on the mat. The dog sat on the log."] * 40 + ["A quick brown fox jumps over a lazy dog."] * 40


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("sample_cli") / "ckpt")
    tokenizer = train_bpe(TEXTS, vocab_size=300, show_progress=False)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_layers=2, headdim=16, d_state=16,
                         chunk_size=16, max_seq_len=64)
    DiffMamba(config).save_pretrained(folder)
    tokenizer.save(folder)
    return folder


def sample(capsys, *argv):
    code = main(["sample", "--no-progress", "--device", "cpu", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def texts_of(out):
    blocks = out.split("=== sample ")[1:]
    return [block.split("===\n", 1)[1].split("\nstats:")[0].rstrip("\n") for block in blocks]


def test_diffusion_infill_prints_samples_stats_and_jsonl(checkpoint, capsys, tmp_path):
    output = tmp_path / "samples.jsonl"
    argv = ["--checkpoint", checkpoint, "--prompt", "The cat [MASK:4] on the mat", "--num-samples", "3",
            "--batch-size", "2", "--steps", "6", "--top-p", "0.9", "--seed", "3", "--stats", "--output", str(output)]
    code, out, err = sample(capsys, *argv)
    assert code == 0, err
    texts = texts_of(out)
    assert len(texts) == 3
    assert all(t.startswith("The cat") and t.endswith(" on the mat") for t in texts)
    stats_line = [line for line in out.splitlines() if line.startswith("stats:")]
    assert len(stats_line) == 1 and "nfe=" in stats_line[0] and "tokens/s=" in stats_line[0]
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["text"] for r in records] == texts
    assert records[0]["sampler"] == "ancestral" and records[0]["steps"] == 6 and records[0]["top_p"] == 0.9
    assert records[0]["generated_tokens"] == 4 and records[0]["nfe"] >= 1
    assert records[0]["run_stats"]["nfe_total"] == records[0]["nfe"] + records[2]["nfe"]
    # Same seed, same samples.
    code, again, _ = sample(capsys, *argv[:-2])
    assert code == 0 and texts_of(again) == texts


@pytest.mark.parametrize("sampler", ["first-hitting", "confidence", "remdm-cap", "ancestral-nocache"])
def test_every_sampler_runs_from_the_cli(checkpoint, capsys, sampler):
    code, out, err = sample(capsys, "--checkpoint", checkpoint, "--sampler", sampler, "--prompt", "The dog",
                            "--length", "12", "--steps", "6", "--block-length", "5")
    assert code == 0, err
    (text,) = texts_of(out)
    assert text.startswith("The dog")


def test_ar_mode_continues_the_prompt(checkpoint, capsys, tmp_path):
    output = tmp_path / "ar.jsonl"
    code, out, err = sample(capsys, "--checkpoint", checkpoint, "--mode", "ar", "--prompt", "The dog", "--length",
                            "12", "--num-samples", "2", "--top-k", "20", "--stats", "--output", str(output))
    assert code == 0, err
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert all(len(r["tokens"]) == 12 and r["text"].startswith("The dog") for r in records)
    # One prefill call, then one step per generated token after the first.
    assert records[0]["sampler"] is None and records[0]["nfe"] == 1 + records[0]["generated_tokens"] - 1
    assert records[0]["cuda_graph"] is False  # the default is on for CUDA devices only
    code, out, err = sample(capsys, "--checkpoint", checkpoint, "--mode", "ar", "--length", "6", "--no-cuda-graph")
    assert code == 0, err
    code, out, err = sample(capsys, "--checkpoint", checkpoint, "--mode", "ar", "--length", "6")
    assert code == 0, err  # unconditional: starts from EOS


@pytest.mark.parametrize("argv,message", [
    (["--prompt", "The cat sat on the mat", "--length", "2"], "longer than --length 2"),
    (["--prompt", "The cat", "--infill", " mat", "--span", "0"], "--span N with N >= 1"),
    (["--prompt", "The [MASK:0] cat"], "n >= 1"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--sampler", "ddim"], "unknown sampler 'ddim'; choose one of: ancestral, ancestral-nocache"),
    (["--mode", "ar", "--prompt", "The [MASK:2] cat"], "--mode ar can only continue a prefix"),
    (["--mode", "ar", "--sampler", "confidence"], "--sampler applies to --mode diffusion"),
    (["--cuda-graph", "--device", "cpu"], "drop --cuda-graph on this machine"),
    (["--mode", "ar", "--cuda-graph", "--device", "cpu"], "drop --cuda-graph on this machine"),
])
def test_bad_input_is_one_line_and_exit_2(checkpoint, capsys, argv, message):
    code, out, err = sample(capsys, "--checkpoint", checkpoint, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffmamba sample: error: "), err
    assert message in lines[0]


def test_missing_or_foreign_checkpoint_folders(capsys, tmp_path):
    code, _, err = sample(capsys, "--checkpoint", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "notes.txt").write_text("not a model")
    code, _, err = sample(capsys, "--checkpoint", str(tmp_path))
    assert code == 2 and "no model in" in err and len(err.strip().splitlines()) == 1


def test_script_entry_point_exits_2_without_traceback(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "sample.py")
    proc = subprocess.run([sys.executable, script, "--checkpoint", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("diffmamba sample: error: ")
