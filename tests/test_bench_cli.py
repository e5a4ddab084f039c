"""`diffmamba bench`: each benchmark runs from the CLI on tiny CPU shapes and prints its environment."""
import json

import pytest

from diffmamba.cli import main


def test_bench_reference_prints_ratio(capsys):
    assert main(["bench", "reference", "--lengths", "32", "--long", "--repeats", "1", "--warmup", "0",
                 "--batch", "1", "--heads", "2", "--headdim", "8", "--d-state", "8"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "loop/chunked" in out and "fwd+bwd" in out


def test_bench_kernels_on_cpu_times_the_reference(capsys):
    assert main(["bench", "kernels", "--shapes", "cpu-tiny", "--ops", "fwd", "--step-shapes"]) == 0
    out = capsys.readouterr().out
    assert "no GPU" in out and "cpu-tiny" in out and "reference" in out



def test_bench_kernels_interpreter_runs_every_triton_path(capsys):
    """The GPU-only rows (Triton fwd+bwd, recompute A/B, backward parts) run under the interpreter,
    so a harness bug cannot cost a GPU session its device time. Times here mean nothing."""
    assert main(["bench", "kernels", "--interpreter", "--shapes", "cpu-micro", "cpu-micro-mimo",
                 "--ops", "fwd", "fwdbwd", "bwdparts", "--profile", "--step-shapes", "--rep", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "Triton interpreter" in out
    for shape in ("cpu-micro", "cpu-micro-mimo"):
        rows = [line for line in out.splitlines() if line.startswith(shape)]
        for needle in ("fwdbwd  triton-recompute", "fwdbwd  triton ", "fwd     triton-split",
                       "fwdbwd  triton-bwd-ieee", "bwd core", "bwd (whole)", "pre-pass fwd",
                       "pre-pass bwd", "glue (rest)"):
            assert any(needle in line for line in rows), (shape, needle, out)
    assert "recompute backward / with the Triton backward" in out
    assert "backward profile, 3 calls" in out and "Self CPU" in out  # --profile's table


def test_bench_resources_refuses_the_interpreter(monkeypatch):
    """`bench resources` compiles real kernels; under TRITON_INTERPRET=1 it says how to run it
    (its sm_90 build itself is tests/kernels/test_sm90_build.py, in a process without the interpreter)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(SystemExit, match="unset TRITON_INTERPRET"):
        main(["bench", "resources", "--quick"])


def test_bench_decode_on_cpu_times_eager_steps_over_context(capsys, tmp_path):
    out = tmp_path / "decode.json"
    assert main(["bench", "decode", "--config", "configs/model/tiny.yaml", "--batch-sizes", "1", "2",
                 "--contexts", "8", "40", "--tokens", "2", "--repeats", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no CUDA device" in printed and "torch=" in printed and "| 2 | 40 | eager |" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [(r["batch"], r["context"], r["impl"]) for r in rows] == [
        (1, 8, "eager"), (1, 40, "eager"), (2, 8, "eager"), (2, 40, "eager")]
    # the floor counts every weight and both state transfers, the same at every context
    assert len({(r["weight_bytes"], r["state_bytes"]) for r in rows if r["batch"] == 1}) == 1
    assert all(r["us_per_token"] > 0 and r["state_bytes"] > 0 for r in rows)


def test_bench_decode_profile_counts_what_a_token_dispatches(capsys):
    assert main(["bench", "decode", "--config", "configs/model/tiny.yaml", "--batch-sizes", "1", "--contexts", "8",
                 "--tokens", "2", "--repeats", "1", "--profile"]) == 0
    printed = capsys.readouterr().out
    assert "batch 1, context 8, eager profile, 1 calls" in printed and "Self CPU time total" in printed
    (line,) = [x for x in printed.splitlines() if "aten ops dispatched" in x]
    assert float(line.split(": ")[1].split()[0]) > 10  # a real count: a 4-layer step dispatches hundreds


def test_bench_decode_runs_the_fused_step_row_in_the_interpreter(capsys, tmp_path):
    """--interpreter (TRITON_INTERPRET=1, set for the tests): the fused step kernel's row runs, so the
    GPU run's fused rows cannot fail on a harness bug."""
    out = tmp_path / "decode.json"
    assert main(["bench", "decode", "--config", "configs/model/tiny.yaml", "--batch-sizes", "1", "--contexts", "8",
                 "--tokens", "2", "--repeats", "1", "--interpreter", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["impl"] for r in rows] == ["eager", "eager fused"] and rows[1]["us_per_token"] > 0
    assert "| 1 | 8 | eager fused |" in capsys.readouterr().out


def test_bench_decode_refuses_two_model_sources(capsys):
    assert main(["bench", "decode", "--config", "configs/model/tiny.yaml", "--checkpoint", "runs/x"]) == 2
    assert capsys.readouterr().err.strip() == "diffmamba bench: error: pass --config or --checkpoint, not both"


def test_bench_decode_times_a_saved_model(capsys, tmp_path):
    import torch

    from diffmamba.config import ModelConfig
    from diffmamba.model import DiffMamba
    torch.manual_seed(0)
    DiffMamba(ModelConfig(vocab_size=20, d_model=16, n_layers=1, headdim=8, d_state=8, chunk_size=4)).save_pretrained(
        str(tmp_path / "run" / "final"))
    assert main(["bench", "decode", "--checkpoint", str(tmp_path / "run"), "--batch-sizes", "1", "--contexts", "4",
                 "--tokens", "1", "--repeats", "1"]) == 0
    assert "layers M;" in capsys.readouterr().out


def test_bench_decode_times_a_hybrid_trunk_whose_cache_grows(capsys, tmp_path):
    out = tmp_path / "decode.json"
    assert main(["bench", "decode", "--config", "configs/model/tiny-hybrid.yaml", "--batch-sizes", "1",
                 "--contexts", "8", "32", "--tokens", "1", "--repeats", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["impl"] for r in rows] == ["eager", "eager"]
    assert rows[1]["state_bytes"] > rows[0]["state_bytes"]  # the attention layer's KV cache grows
