"""`diffmamba eval compare --dual`: AR, block on AR states, parallel thresholds and speculative systems
side by side, end to end on tiny freshly initialised checkpoints."""
import json
import os

import pytest

from checkpoint_helpers import write_run
from diffmamba.cli import main
from diffmamba.core.errors import UserError
from diffmamba.eval.decoding import split_sampler
from diffmamba.eval.report.pareto import pareto_points


@pytest.fixture(scope="module")
def dual_run(tiny_ckpts):
    return write_run(os.path.join(tiny_ckpts["root"], "dual"), tiny_ckpts["tokenizer"], tiny_ckpts["corpus"], "dual",
                     block_size=8, seed=4)


@pytest.mark.slow
def test_compare_with_a_dual_checkpoint(tiny_ckpts, dual_run, tiny_hf_judge, tmp_path):
    out = str(tmp_path / "eval")
    code = main(["eval", "compare", "--dual", dual_run, "--draft-lens", "3",
                 "--samplers", "parallel:0.5", "parallel", "--judge", tiny_hf_judge, "--max-rows", "4",
                 "--repeats", "1", "--num-samples", "2", "--length", "8", "--prompt-len", "4", "--tasks",
                 "unconditional", "--batch-sizes", "1", "2", "--speed-repeats", "1", "--warmup", "0",
                 "--infill-rows", "2", "--infill-sampler", "confidence", "--device", "cpu", "--out", out])
    assert code == 0
    results = json.load(open(os.path.join(out, "results.json")))
    names = [s["name"] for s in results["systems"]]
    assert names == ["AR (dual)", "block L'=8 (dual)", "speculative k=3 (dual)"]
    likelihood = {r["system"]: r for r in results["likelihood"]}
    # Speculative decoding is lossless: its likelihood is the AR NLL of the same weights.
    assert likelihood["speculative k=3 (dual)"]["ppl"] == likelihood["AR (dual)"]["ppl"]
    assert likelihood["block L'=8 (dual)"]["kind"] == "bound"
    generation = [r for r in results["generation"] if r["mode"] != "reference"]
    thresholds = {(r["system"], r.get("threshold")) for r in generation if r["sampler"] == "parallel"}
    assert thresholds == {("block L'=8 (dual)", 0.5), ("block L'=8 (dual)", 0.9)}
    speed = {(r["system"], r["sampler"], r.get("threshold"), r["batch_size"]) for r in results["speed"]}
    assert ("speculative k=3 (dual)", "speculative", None, 2) in speed
    assert ("block L'=8 (dual)", "parallel", 0.5, 1) in speed
    assert all(r["nfe"] >= 1 for r in results["speed"])
    for r in results["speed"]:  # speculative rows carry their acceptance, the others none
        spec = r["mode"] == "speculative"
        assert ("acceptance" in r) == spec and ("tokens_per_round" in r) == spec
        if spec:
            assert 0 <= r["acceptance"] <= 1 and 1 <= r["tokens_per_round"] <= 4  # k = 3: at most 3 drafts + 1
            assert len(r["acceptance_by_position"]) == 3 and all(0 <= a <= 1 for a in r["acceptance_by_position"])
    points = {(p["system"], p["sampler"]) for p in pareto_points(results)}
    assert ("speculative k=3 (dual)", "speculative") in points and ("block L'=8 (dual)", "parallel") in points
    assert os.path.getsize(os.path.join(out, "pareto.png")) > 1000
    assert not any("dual" in n and "never trained" in n for n in results["notes"])
    assert {r["system"] for r in results["infill"]} <= {"AR (dual)"}


def test_bad_specs_and_flags(tiny_ckpts, dual_run, tmp_path, capsys):
    assert split_sampler("parallel:0.7") == ("parallel", {"threshold": 0.7})
    assert split_sampler("ancestral") == ("ancestral", {})
    for bad in ("parallel:2", "parallel:x", "ancestral:0.5"):
        with pytest.raises(UserError):
            split_sampler(bad)
    base = ["eval", "likelihood", "--out", str(tmp_path / "x"), "--device", "cpu"]
    assert main([*base, "--dual", tiny_ckpts["ar"]]) == 2
    assert "--dual takes a checkpoint trained with --objective dual" in capsys.readouterr().err
    assert main([*base, "--ar", tiny_ckpts["ar"], "--draft-lens", "3"]) == 2
    assert "--draft-lens applies to a --dual checkpoint" in capsys.readouterr().err
    assert main([*base, "--dual", dual_run, "--draft-lens", "3", "65"]) == 2  # refused before any evaluation
    assert "--draft-lens must be in [1, 64]" in capsys.readouterr().err
