"""`diffmamba sample` with the parallel sampler and --mode speculative, end to end on tiny checkpoints,
and their one-line errors."""
import json
import re

import pytest

from checkpoint_helpers import write_checkpoint
from diffmamba.cli import main
from diffmamba.config import DataConfig, ObjectiveConfig
from diffmamba.data.tokenizer import train_bpe

TEXTS = ["The cat sat on the mat. The dog sat on the log."] * 40 + ["A quick brown fox jumps over a lazy dog."] * 40


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoding_cli")
    tokenizer = train_bpe(TEXTS, vocab_size=300, show_progress=False)
    data = DataConfig(seq_len=64)
    return {name: write_checkpoint(str(root / name), tokenizer, data, objective, max_seq_len=64)
            for name, objective in [("dual", ObjectiveConfig(name="dual", block_size=8)),
                                    ("diffusion", ObjectiveConfig(name="diffusion"))]}


def sample(capsys, *argv):
    code = main(["sample", "--no-progress", "--device", "cpu", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_parallel_sampler_plain_and_in_blocks(checkpoints, capsys, tmp_path):
    output = tmp_path / "p.jsonl"
    code, out, err = sample(capsys, "--checkpoint", checkpoints["diffusion"], "--sampler", "parallel", "--threshold",
                            "0.5", "--prompt", "The cat", "--length", "16", "--stats", "--output", str(output))
    assert code == 0, err
    record = records(output)[0]
    assert record["sampler"] == "parallel" and record["threshold"] == 0.5 and record["steps"] is None
    assert 1 <= record["nfe"] <= record["generated_tokens"] and record["text"].startswith("The cat")
    code, out, err = sample(capsys, "--checkpoint", checkpoints["dual"], "--mode", "block", "--sampler", "parallel",
                            "--prompt", "The cat", "--length", "24", "--output", str(output), "--overwrite")
    assert code == 0 and "note" not in err, err
    assert records(output)[0]["block_size"] == 8


def test_speculative_greedy_equals_ar_greedy_from_the_command_line(checkpoints, capsys, tmp_path):
    common = ["--checkpoint", checkpoints["dual"], "--prompt", "The dog", "--length", "20", "--temperature", "0",
              "--num-samples", "2"]
    code, ar_out, err = sample(capsys, *common, "--mode", "ar")
    assert code == 0, err
    output = tmp_path / "s.jsonl"
    code, out, err = sample(capsys, *common, "--mode", "speculative", "--draft-steps", "2", "--stats",
                            "--output", str(output))
    assert code == 0, err
    assert [r["tokens"] for r in records(output)] and out.split("stats:")[0] == ar_out
    assert "tokens_per_round=" in out and "acceptance=" in out
    # greedy drafts of 7 tokens: a rate per draft position, each a percentage
    assert re.search(r"by draft position=\d+(/\d+){6}%", out), out
    assert records(output)[0]["draft_len"] == 7 and records(output)[0]["draft_steps"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--sampler", "parallel", "--threshold", "1.5"], "threshold must be in (0, 1]"),
    (["--sampler", "parallel", "--threshold", "0"], "threshold must be in (0, 1]"),
    (["--mode", "ar", "--draft-len", "4"], "--draft-len / --draft-steps apply to --mode speculative"),
    (["--mode", "speculative", "--draft-len", "0"], "--draft-len must be in [1, 64]"),
    (["--mode", "speculative", "--draft-len", "65"], "--draft-len must be in [1, 64]"),
    (["--mode", "speculative", "--draft-len", "2", "--draft-steps", "3"], "--draft-steps must be in"),
    (["--mode", "speculative", "--sampler", "parallel"], "--sampler applies to --mode diffusion or block"),
    (["--mode", "speculative", "--prompt", "The [MASK:2] cat"], "--mode speculative can only continue a prefix"),
])
def test_bad_flags_get_one_line(checkpoints, capsys, argv, message):
    code, _, err = sample(capsys, "--checkpoint", checkpoints["dual"], "--length", "12", *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_speculative_refuses_a_checkpoint_that_cannot_draft(checkpoints, capsys):
    code, _, err = sample(capsys, "--checkpoint", checkpoints["diffusion"], "--mode", "speculative", "--length", "12")
    assert code == 2 and "needs a checkpoint trained with --objective dual" in err
    assert "objective 'diffusion'" in err and len(err.strip().splitlines()) == 1


def test_bench_speculative_prints_break_even_and_both_decoders(checkpoints, capsys):
    """`diffmamba bench speculative`: call costs, the break-even tokens per round, and (on a dual
    checkpoint) measured acceptance with speculative and AR tokens/s from the same run."""
    assert main(["bench", "speculative", "--checkpoint", checkpoints["dual"], "--draft-lens", "1", "3",
                 "--batch-sizes", "2", "--length", "6", "--context", "4", "--repeats", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| 2 |")]
    assert [r[1].strip() for r in rows] == ["1", "3"] and all(len(r) == 12 for r in rows), out
    for r in rows:
        step, draft, score, even = (float(r[i].split()[0]) for i in (2, 3, 4, 5))
        assert abs(even - (draft + score) / step) < 0.02 * even + 0.01
        assert 1.0 <= float(r[6]) <= int(r[1]) + 1 and r[11].strip().endswith("x")
        by_position = r[8].strip()  # e.g. "67/50/0%": one rate per draft position
        assert re.fullmatch(r"\d+(/\d+)*%", by_position) and by_position.count("/") == int(r[1]) - 1, by_position
    assert "torch=" in out
    assert main(["bench", "speculative", "--checkpoint", checkpoints["diffusion"], "--device", "cpu"]) == 2
    assert "only a dual checkpoint" in capsys.readouterr().err
    assert main(["bench", "speculative", "--draft-lens", "0", "--device", "cpu"]) == 2
    assert "--draft-lens must be in [1, 64]" in capsys.readouterr().err
    assert main(["bench", "speculative", "--device", "cpu", "--cuda-graph"]) == 2
    assert "drop --cuda-graph on this machine" in capsys.readouterr().err


def test_bench_speculative_times_the_graphed_calls(checkpoints, capsys, monkeypatch):
    """With graphs (run eagerly here: the capture protocol without a GPU) the same table comes out,
    the calls going through GraphedStep / GraphedDenoiser / GraphedScore."""
    from graph_helpers import run_captures_eagerly

    from diffmamba.bench import speculative as bench
    built = run_captures_eagerly(monkeypatch)
    monkeypatch.setattr(bench, "check_graph_device", lambda device: None)
    assert main(["bench", "speculative", "--checkpoint", checkpoints["dual"], "--draft-lens", "3", "--batch-sizes",
                 "2", "--length", "6", "--context", "4", "--repeats", "1", "--device", "cpu", "--cuda-graph"]) == 0
    out = capsys.readouterr().out
    assert "every call replayed from a CUDA graph" in out and len([x for x in out.splitlines() if x.startswith("| 2 |")]) == 1
    assert len(built) >= 3  # the step, the draft's denoiser and the scoring scan, then the decoders' own
    assert main(["bench", "speculative", "--batch-sizes", "0", "--device", "cpu"]) == 2
    assert "--batch-sizes, --length, --context and --repeats must be >= 1" in capsys.readouterr().err
    assert main(["bench", "speculative", "--d-model", "16", "--n-layers", "1", "--headdim", "8", "--vocab-size", "20",
                 "--batch-sizes", "1", "--draft-lens", "2", "--repeats", "1", "--context", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "fresh model" in out and "speculative tok/s" not in out
