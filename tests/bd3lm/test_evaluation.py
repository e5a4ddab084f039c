"""The L' dial in `diffmamba eval`: block systems next to AR and full diffusion, end to end on tiny
freshly initialised checkpoints (one per L'), and the hooks' own checks."""
import json
import os

import pytest
import torch

from diffmamba.cli import main

from checkpoint_helpers import write_run

WORDS = "the quick brown fox jumps over the lazy dog while a small cat sleeps near the warm fire".split()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from diffmamba.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("block-eval")
    g = torch.Generator().manual_seed(0)
    docs = [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (40,), generator=g)) for _ in range(80)]
    corpus = os.path.join(root, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n\n".join(docs))
    tok = train_bpe(docs, 300, show_progress=False)
    return {"diffusion": write_run(os.path.join(root, "diff"), tok, corpus, "diffusion", seed=1),
            "ar": write_run(os.path.join(root, "ar"), tok, corpus, "ar", seed=2),
            "block1": write_run(os.path.join(root, "b1"), tok, corpus, "block_diffusion", 1, seed=3),
            "block8": write_run(os.path.join(root, "b8"), tok, corpus, "block_diffusion", 8, seed=4)}


def test_compare_reports_the_dial(runs, tmp_path, capsys):
    out = str(tmp_path / "eval")
    code = main(["eval", "compare", "--diffusion", runs["diffusion"], "--ar", runs["ar"],
                 "--block", runs["block1"], runs["block8"], "--judge", "none", "--max-rows", "4", "--repeats", "2",
                 "--samplers", "ancestral", "--steps", "4", "--num-samples", "2", "--length", "8", "--prompt-len", "4",
                 "--tasks", "unconditional", "--batch-sizes", "1", "--contexts", "0", "16", "--speed-repeats", "1",
                 "--warmup", "0", "--infill-rows", "2", "--device", "cpu", "--out", out])
    assert code == 0, capsys.readouterr().err
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    names = [s["name"] for s in results["systems"]]
    assert names[2:] == ["block L'=1", "block L'=8"]
    likelihood = {r["system"]: r for r in results["likelihood"]}
    assert likelihood[names[2]]["kind"] == "exact" and likelihood[names[3]]["kind"] == "bound"
    assert likelihood[names[3]]["num_repeats"] == 2 and likelihood[names[3]]["block_size"] == 8
    assert likelihood[names[2]]["tokens"] == likelihood[names[0]]["tokens"]  # the same validation tokens
    block_gen = [r for r in results["generation"] if r["mode"] == "block"]
    assert {r["block_size"] for r in block_gen} == {1, 8} and all(r["length"] == 8 for r in block_gen)
    speed = results["context_speed"]
    assert {(r["system"], r["context"]) for r in speed} == {(n, c) for n in names for c in (0, 16)}
    block8 = [r for r in speed if r["system"] == names[3]]
    assert block8[1]["prefill_s"] > 0 and block8[0]["prefill_s"] == 0  # 16 context tokens = 2 whole blocks
    assert all(r["mode"] != "block" for r in results["infill"])
    report = open(os.path.join(out, "report.md")).read()
    assert "## Block diffusion: the L' dial" in report and "context 16: tokens/s" in report
    assert os.path.isfile(os.path.join(out, "block_dial.png"))
    assert not any("block" in n and "never trained" in n for n in results["notes"])


def test_block_options_errors(runs, tmp_path, capsys):
    base = ["eval", "likelihood", "--out", str(tmp_path / "x"), "--device", "cpu"]
    assert main([*base, "--block", runs["diffusion"]]) == 2
    assert "not trained with objective block_diffusion" in capsys.readouterr().err
    assert main([*base, "--ar", runs["ar"], "--block-sizes", "4"]) == 2
    assert "--block-sizes applies to --block" in capsys.readouterr().err
    assert main([*base, "--block", runs["block8"], "--block-sizes", "5", "--max-rows", "2"]) == 2
    err = capsys.readouterr().err
    assert "block size 5 does not divide the validation row length 32" in err and "1, 2, 4, 8, 16, 32" in err


def test_bench_checks_the_block_path_and_times_every_mode(capsys):
    from diffmamba.bench.bd3lm import main as bench

    assert bench(["--contexts", "0", "8", "--block-size", "4", "--length", "8", "--repeats", "1", "--check",
                  "--vocab-size", "50", "--d-model", "16", "--n-layers", "1", "--headdim", "8", "--d-state", "8",
                  "--chunk-size", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "'cached_equals_uncached': True" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["block"], ["diffusion"], ["ar"])]
    assert [(r[0], r[1]) for r in rows] == [(m, c) for m in ("block", "diffusion", "ar") for c in ("0", "8")]
    assert bench(["--length", "6", "--block-size", "4"]) == 2
