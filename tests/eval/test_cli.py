"""`diffmamba eval ...` end to end on tiny checkpoints, and its one-line errors for bad input."""
import json
import math
import os
import subprocess
import sys

import pytest

from diffmamba.cli import main

SMALL = ["--max-rows", "4", "--batch-size", "2", "--seed", "3"]
GEN = ["--samplers", "ancestral", "confidence", "--steps", "2", "4", "--length", "8", "--num-samples", "2",
       "--prompt-len", "4"]
SPEED = ["--batch-sizes", "1", "2", "--lengths", "8", "--speed-repeats", "1", "--warmup", "1",
         "--speed-samplers", "ancestral", "--speed-steps", "2"]


def _numbers(obj, path="results"):
    """Every number in a nested structure, with where it sits."""
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, (int, float)):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")


def test_compare_end_to_end(tiny_ckpts, tmp_path):
    out = str(tmp_path / "report")
    # The judge: a third diffmamba AR checkpoint with its own tokenizer (text is re-tokenised for it).
    rc = main(["eval", "compare", "--diffusion", tiny_ckpts["diffusion"], "--ar", tiny_ckpts["ar"],
               "--judge", tiny_ckpts["other_tok"], "--out", out, "--repeats", "3", "--infill-span", "4", "--infill-rows", "2",
               *SMALL, *GEN, *SPEED])
    assert rc == 0
    res = json.load(open(os.path.join(out, "results.json")))
    bad = [(p, v) for p, v in _numbers(res) if isinstance(v, float) and not math.isfinite(v)
           and not p.endswith(("distinct_4", "distinct_3"))]  # 4-grams of 2-token docs may not exist
    assert not bad, bad
    lik = {r["mode"]: r for r in res["likelihood"]}
    assert lik["ar"]["kind"] == "exact" and lik["diffusion"]["kind"] == "bound"
    assert lik["ar"]["tokens"] == lik["diffusion"]["tokens"] == res["validation"]["tokens"] == 4 * 32
    assert len(lik["diffusion"]["repeats"]) == 3 and lik["diffusion"]["settings"]["seeds"] == [3, 4, 5]
    gen = res["generation"]
    samplers = {(r["system"], r["sampler"], r["steps"], r["task"]) for r in gen}
    for task in ("unconditional", "prompted"):
        assert ("AR", "ar", None, task) in samplers and ("validation text", "-", None, task) in samplers
        for s in ("ancestral", "confidence"):
            for n in (2, 4):
                assert ("diffusion", s, n, task) in samplers
    assert all(r["top_p"] == 0.9 for r in gen if r["mode"] != "reference")
    assert all(r["judge"] == res["judge"]["name"] for r in gen) and res["judge"]["kind"] == "diffmamba"
    assert res["judge"]["tokenizer_vocab_size"] == 280  # the judge's own tokenizer, not the models' (300)
    assert {r["context"] for r in res["infill"]} == {"left only", "both sides"}
    assert {(r["system"], r["batch_size"]) for r in res["speed"]} == {(s, b) for s in ("AR", "diffusion") for b in (1, 2)}
    assert not any(r["cuda_graph"] for r in res["speed"])  # graphs by default on CUDA devices only
    md = open(os.path.join(out, "report.md")).read()
    assert res["judge"]["name"] in md and "≤" in md and "## Summary" in md and "Likelihood:" in md
    for plot in ("gen_ppl_vs_nfe", "pareto", "likelihood", "speed"):
        assert os.path.getsize(os.path.join(out, f"{plot}.png")) > 1000, plot
    samples = [json.loads(line) for line in open(os.path.join(out, "samples.jsonl"))]
    assert len(samples) == 2 * 2 * (1 + 2 * 2)  # samples x tasks x (AR + 2 samplers x 2 steps)


def test_one_checkpoint_both_modes_and_script(tiny_ckpts, tmp_path):
    out = str(tmp_path / "one")
    script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "eval_compare.py")
    proc = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--diffusion" in proc.stdout and "--judge" in proc.stdout
    assert main(["eval", "likelihood", "--checkpoint", tiny_ckpts["diffusion"], "--out", out, *SMALL]) == 0
    res = json.load(open(os.path.join(out, "results.json")))
    assert [s["name"] for s in res["systems"]] == ["AR mode (same weights)", "diffusion mode (same weights)"]
    assert any("trained with objective 'diffusion'" in n for n in res["notes"])
    # A second subcommand into the same folder adds its section and keeps the first.
    assert main(["eval", "infill", "--checkpoint", tiny_ckpts["diffusion"], "--out", out, "--infill-span", "3",
                 "--infill-rows", "2", "--repeats", "1", *SMALL]) == 0
    res = json.load(open(os.path.join(out, "results.json")))
    assert res["likelihood"] and res["infill"]


def test_several_diffusion_checkpoints_side_by_side(tiny_ckpts, tmp_path, capsys):
    """`--diffusion A B`: e.g. a model trained from scratch beside one adapted from AR, each its own
    system named by its path, each with its own bound on the same tokens."""
    out = str(tmp_path / "two")
    a, b = tiny_ckpts["diffusion"], tiny_ckpts["ar"]  # any weights run in diffusion mode
    assert main(["eval", "likelihood", "--diffusion", a, b, "--ar", b, "--repeats", "1", "--out", out, *SMALL]) == 0
    res = json.load(open(os.path.join(out, "results.json")))
    assert [s["name"] for s in res["systems"]] == ["AR", f"diffusion ({a})", f"diffusion ({b})"]
    bounds = {r["system"]: r for r in res["likelihood"] if r["kind"] == "bound"}
    assert set(bounds) == {f"diffusion ({a})", f"diffusion ({b})"}
    assert bounds[f"diffusion ({a})"]["ppl"] != bounds[f"diffusion ({b})"]["ppl"]  # two models, two numbers
    assert len({r["tokens"] for r in res["likelihood"]}) == 1
    capsys.readouterr()
    rc = main(["eval", "likelihood", "--diffusion", a, a, "--out", str(tmp_path / "twice"), *SMALL])
    line = _error_line(capsys)
    assert rc == 2 and "same checkpoint twice" in line


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_inputs_exit_2_with_one_line(tiny_ckpts, tmp_path, capsys):
    out = str(tmp_path / "bad")
    rc = main(["eval", "likelihood", "--diffusion", tiny_ckpts["diffusion"], "--ar", tiny_ckpts["other_tok"],
               "--out", out, *SMALL])
    line = _error_line(capsys)
    assert rc == 2 and "different tokenizers" in line and "same data.tokenizer" in line
    rc = main(["eval", "generate", "--diffusion", tiny_ckpts["diffusion"], "--ar", tiny_ckpts["ar"], "--judge",
               str(tmp_path / "missing-judge"), "--out", out, *SMALL, *GEN])
    line = _error_line(capsys)
    assert rc == 2 and "cannot be loaded" in line and "smollm2" in line
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    rc = main(["eval", "likelihood", "--diffusion", tiny_ckpts["diffusion"], "--ar", tiny_ckpts["ar"],
               "--data", str(empty), "--out", out, *SMALL])
    line = _error_line(capsys)
    assert rc == 2 and f"{empty} is empty" in line
    short = tmp_path / "short.txt"
    short.write_text("the fox")
    rc = main(["eval", "likelihood", "--diffusion", tiny_ckpts["diffusion"], "--data", str(short), "--out", out,
               *SMALL])
    line = _error_line(capsys)
    assert rc == 2 and "validation set is empty" in line
    rc = main(["eval", "likelihood", "--diffusion", str(tmp_path / "nope"), "--out", out])
    line = _error_line(capsys)
    assert rc == 2 and "does not exist" in line
    rc = main(["eval", "speed", "--ar", tiny_ckpts["ar"], "--cuda-graph", "--device", "cpu", "--out", out])
    line = _error_line(capsys)
    assert rc == 2 and "--cuda-graph needs a CUDA device" in line


def test_speed_cuda_graph_reaches_every_mode(monkeypatch):
    """`eval speed --cuda-graph`: every mode decodes with captured calls (speculative decoding pads
    its shrinking batch to the captured one)."""
    import torch

    from diffmamba.eval import sampling
    from diffmamba.eval.systems import System
    from diffmamba.sampling.base import SampleResult
    seen = {}

    def fake_generate(model, mode, canvas, fixed, options, generator, **kw):
        seen[mode] = options.cuda_graph
        return SampleResult(canvas, 1, 1)

    monkeypatch.setattr(sampling, "generate_tokens", fake_generate)
    model = type("M", (), {"mask_token_id": 9})()
    for mode, settings in (("ar", {}), ("diffusion", {}), ("block", {"block_size": 4}), ("speculative", {"draft_len": 3})):
        setting = sampling.GenSetting("ar" if mode == "ar" else "ancestral", 4)
        sampling.generate_batch(model, System(mode, mode, "ckpt", settings), setting, 2, 8,
                                torch.Generator(), cuda_graph=True)
    assert seen == {"ar": True, "diffusion": True, "block": True, "speculative": True}


def test_compare_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: 8 16 32 64)", "(default: 1 8 64)", "(default: smollm2)", "(default: 0)"):
        assert shown in text
