"""`eval` keeps finished work: each section is in results.json as soon as it completes, a re-run with
the same settings keeps it, and every input (the judge included) is checked before any work."""
import json
import os

from diffmamba.cli import main

from reliability_helpers import error_lines


def likelihood_command(run, out, *extra):
    return ["eval", "likelihood", "--checkpoint", run, "--out", out, "--device", "cpu", "--max-rows", "4",
            "--repeats", "1", "--batch-size", "4", *extra]


def read(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def test_a_finished_section_survives_a_later_failure_and_is_kept_on_rerun(finished_run, tmp_path, capsys):
    out = str(tmp_path / "eval")
    assert main(likelihood_command(finished_run, out)) == 0
    capsys.readouterr()
    first = read(out)
    assert set(first["completed"]) == {"likelihood"} and len(first["likelihood"]) == 2

    # A bad judge is found before any evaluation: nothing is computed, nothing already there is lost.
    code = main(["eval", "compare", "--checkpoint", finished_run, "--out", out, "--device", "cpu", "--max-rows", "4",
                 "--repeats", "1", "--batch-size", "4", "--judge", str(tmp_path / "no-judge")])
    captured = capsys.readouterr()
    assert code == 2 and "judge" in error_lines(captured.err)[0] and "likelihood " not in captured.out
    assert read(out)["likelihood"] == first["likelihood"]

    # Same settings (spelled through another subcommand): the section is kept, not recomputed.
    code = main(["eval", "compare", "--checkpoint", finished_run, "--out", out, "--device", "cpu", "--max-rows", "4",
                 "--repeats", "1", "--batch-size", "4", "--judge", "none", "--num-samples", "1", "--length", "4", "--prompt-len", "8",
                 "--samplers", "ancestral", "--steps", "2", "--infill-rows", "1", "--infill-span", "2",
                 "--batch-sizes", "1", "--speed-repeats", "1", "--warmup", "0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "likelihood: kept from an earlier run" in captured.out
    results = read(out)
    assert results["likelihood"] == first["likelihood"]
    assert set(results["completed"]) == {"likelihood", "generate", "infill", "speed"}

    # Other settings: recomputed.
    assert main(likelihood_command(finished_run, out, "--seed", "1")) == 0
    assert "kept from an earlier run" not in capsys.readouterr().out


def test_each_section_is_written_when_it_finishes(finished_run, tmp_path, monkeypatch, capsys):
    """An interruption during generation keeps the likelihood numbers already computed."""
    from diffmamba.eval import generation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generation, "evaluate_generation", interrupted)
    out = str(tmp_path / "eval")
    code = main(["eval", "compare", "--checkpoint", finished_run, "--out", out, "--device", "cpu", "--max-rows", "4",
                 "--repeats", "1", "--batch-size", "4", "--judge", "none", "--prompt-len", "8", "--num-samples", "1"])
    assert code == 130
    assert set(read(out)["completed"]) == {"likelihood"} and len(read(out)["likelihood"]) == 2
