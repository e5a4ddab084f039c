"""Report builder on hand-made results: tables, generated summary, plots, judge named."""
import json
import math
import os

from diffmamba.eval import report
from diffmamba.eval.report import pareto


def _results(ar_gen=20.0, diff_gen=(60.0, 30.0, 15.0), ar_entropy=4.0, diff_entropy=4.1):
    gen = [{"system": "AR", "mode": "ar", "task": "unconditional", "sampler": "ar", "steps": None, "nfe": 32.0,
            "top_p": 0.9, "temperature": 1.0, "length": 32, "gen_ppl": ar_gen, "entropy": ar_entropy,
            "distinct_2": 0.9, "distinct_4": 1.0, "corpus_distinct_4": 0.9, "num_samples": 4}]
    for nfe, g in zip((4, 16, 64), diff_gen):
        gen.append({"system": "diffusion", "mode": "diffusion", "task": "unconditional", "sampler": "ancestral",
                    "steps": nfe, "nfe": float(nfe), "top_p": 0.9, "temperature": 1.0, "length": 32, "gen_ppl": g,
                    "entropy": diff_entropy, "distinct_2": 0.9, "distinct_4": 1.0, "corpus_distinct_4": 0.9,
                    "num_samples": 4})
    speed = []
    for bs in (1, 8):
        speed.append({"system": "AR", "mode": "ar", "sampler": "ar", "steps": None, "nfe": 32.0, "batch_size": bs,
                      "length": 32, "tokens_per_s": 100.0 * bs, "latency_s": 0.32, "peak_mem_mib": 1.0,
                      "mem_label": "x", "repeats": 3})
        for nfe in (4, 16, 64):
            speed.append({"system": "diffusion", "mode": "diffusion", "sampler": "ancestral", "steps": nfe,
                          "nfe": float(nfe), "batch_size": bs, "length": 32, "tokens_per_s": 3200.0 * bs / nfe,
                          "latency_s": nfe / 100, "peak_mem_mib": 2.0, "mem_label": "x", "repeats": 3})
    return {
        "meta": {"created": "now", "command": "test", "environment_line": "cpu"},
        "systems": [{"name": "AR", "mode": "ar", "checkpoint": "a", "settings": {}},
                    {"name": "diffusion", "mode": "diffusion", "checkpoint": "d", "settings": {}}],
        "judge": {"name": "TinyJudge-xyz", "kind": "hf", "parameters": 10, "tokenizer_vocab_size": 5, "max_length": 64},
        "likelihood": [{"system": "AR", "mode": "ar", "kind": "exact", "nll_per_token": math.log(10), "ppl": 10.0,
                        "tokens": 100},
                       {"system": "diffusion", "mode": "diffusion", "kind": "bound", "nll_per_token": math.log(12),
                        "ppl": 12.0, "nll_std": 0.01, "ppl_std": 0.12, "num_repeats": 3, "tokens": 100}],
        "generation": gen,
        "infill": [{"system": "diffusion", "mode": "diffusion", "context": "both sides", "span_length": 4,
                    "token_accuracy": 0.5, "nll_per_token": 1.0, "nll_kind": "bound", "num_spans": 8},
                   {"system": "AR", "mode": "ar", "context": "left only", "span_length": 4,
                    "token_accuracy": 0.25, "nll_per_token": 1.5, "nll_kind": "exact", "num_spans": 8}],
        "speed": speed,
    }


def test_report_files_and_generated_summary(tmp_path):
    paths = report.write_report(_results(), str(tmp_path))
    for name in ("results", "report", "gen_ppl_vs_nfe", "pareto", "likelihood", "speed"):
        assert os.path.getsize(paths[name]) > 0, name
    md = open(paths["report"]).read()
    assert "TinyJudge-xyz" in md
    assert "≤ 12.0" in md and "= 10.0" in md
    assert "AR wins" in md.replace("numbers measured, AR wins", "AR wins")
    # diffusion reaches AR's gen-PPL (20) at NFE 64 (15 <= 20) and not before
    assert "matches the AR gen-PPL from NFE 64" in md
    # diffusion faster than AR at NFE 4 and 16 (3200/16 = 200 > 100; 3200/64 = 50 < 100)
    assert "faster than AR here: ancestral NFE 16.0, ancestral NFE 4.00." in md
    assert "unstable" not in md
    loaded = json.load(open(paths["results"]))
    assert loaded["judge"]["name"] == "TinyJudge-xyz"
    assert set(loaded["plots"]) >= {"gen_ppl_vs_nfe", "pareto", "likelihood"}


def test_the_header_names_where_a_warm_started_checkpoint_began():
    results = _results()
    results["checkpoints"] = {"d": {"parameters": 3e6, "trained_objective": "diffusion", "trained_steps": 300,
                                    "init_from": "runs/demo-ar", "weights": "ema"},
                              "a": {"parameters": 3e6, "trained_objective": "ar", "trained_steps": 300}}
    md = report.render_markdown(results)
    assert "checkpoint `d` (3.00M parameters, trained objective diffusion, 300 steps, started from `runs/demo-ar`" in md
    assert "checkpoint `a` (3.00M parameters, trained objective ar, 300 steps)" in md


def test_summary_follows_the_numbers():
    flipped = _results(ar_gen=100.0, diff_gen=(60.0, 30.0, 15.0), ar_entropy=4.0, diff_entropy=2.0)
    lines = report.generation_summary(flipped["generation"])
    assert "diffusion (ancestral, NFE 64.0) has the lower gen-PPL" in lines[0]
    assert "Caution" in lines[0]  # its entropy is 2 nats lower
    flipped["likelihood"][1]["ppl"] = 9.0
    assert "diffusion wins on likelihood" in report.likelihood_summary(flipped["likelihood"])[0]


def test_unstable_timings_are_flagged():
    res = _results()
    for r in res["speed"]:
        r.update(latency_min_s=1.0, latency_max_s=1.1)
    assert not any("unstable" in line for line in report.speed_summary(res["speed"]))
    res["speed"][0]["latency_max_s"] = 3.0
    assert "unstable" in report.speed_summary(res["speed"])[0]


def test_pareto_front_hand_case():
    pts = [{"tokens_per_s": 10, "gen_ppl": 5}, {"tokens_per_s": 20, "gen_ppl": 6},
           {"tokens_per_s": 5, "gen_ppl": 7}, {"tokens_per_s": 20, "gen_ppl": 9}]
    front = pareto.pareto_front(pts)
    assert front == [pts[0], pts[1]]


def test_pareto_section_has_a_table_per_batch_size_and_a_plain_goal_verdict():
    lines = "\n".join(pareto.pareto_section(_results()))
    assert "Batch 1:" in lines and "Batch 8:" in lines
    assert lines.count("**not met**") == 2  # ancestral NFE 16 is faster but 1.5x AR's gen-PPL
    assert "ancestral: gen-PPL 30.0 (1.50× AR's)" in lines
    met = "\n".join(pareto.pareto_section(_results(diff_gen=(60.0, 21.0, 15.0))))
    assert met.count("**met** by diffusion ancestral (2.00× the tokens/s, gen-PPL 21.0") == 2
    # the same point at a different entropy is not a match: part of its gen-PPL could be blander text
    blander = "\n".join(pareto.pareto_section(_results(diff_gen=(60.0, 21.0, 15.0), diff_entropy=3.5)))
    assert "**met**" not in blander and blander.count("**not met**") == 2


def test_pareto_points_per_batch_size():
    res = _results()
    assert {p["batch_size"] for p in pareto.pareto_points(res)} == {8}  # default: the largest batch
    ones = pareto.pareto_points(res, 1)
    assert len(ones) == 4 and {p["batch_size"] for p in ones} == {1}
    assert [p["tokens_per_s"] for p in pareto.pareto_front(ones)] == [50.0, 100.0, 200.0, 800.0]  # each trades speed for quality


def test_rows_that_differ_only_in_the_parallel_threshold_read_differently():
    res = _results()
    base = {"system": "diffusion", "mode": "diffusion", "task": "unconditional", "sampler": "parallel", "steps": None,
            "nfe": 32.0, "top_p": 0.9, "temperature": 1.0, "length": 32, "gen_ppl": 9.0, "entropy": 2.0,
            "num_samples": 4, "batch_size": 1, "tokens_per_s": 10.0, "latency_s": 3.2, "peak_mem_mib": 1.0}
    rows = [dict(base, threshold=c) for c in (0.5, 0.9)]
    for table in (report.generation_table(rows), report.speed_table(rows)):
        assert "parallel C=0.500" in table and "parallel C=0.900" in table
    res["generation"] += rows
    assert "(parallel C=0.500, NFE 32.0)" in "\n".join(report.generation_summary(res["generation"]))


def test_pareto_plot_has_one_legend_below_its_panels_with_each_setting_once(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(pareto, "save_figure", lambda fig, path: seen.setdefault("fig", fig) and path)
    pareto.plot_pareto(_results(), str(tmp_path / "p.png"))
    fig = seen["fig"]
    assert len(fig.axes) == 2 and all(ax.get_legend() is None for ax in fig.axes)  # no legend over the points
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["AR: ar", "diffusion: ancestral", "Pareto front"]
    colours = [tuple(ax.collections[1].get_facecolor()[0]) for ax in fig.axes]  # the diffusion points
    assert colours[0] == colours[1]  # one setting, one colour in every panel
