"""`diffmamba bench`: each benchmark runs from the CLI on tiny CPU shapes and prints its environment."""
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
                 "--ops", "fwd", "fwdbwd", "bwdparts", "--step-shapes", "--rep", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "Triton interpreter" in out
    for shape in ("cpu-micro", "cpu-micro-mimo"):
        rows = [line for line in out.splitlines() if line.startswith(shape)]
        for needle in ("fwdbwd  triton-recompute", "fwdbwd  triton ", "fwd     triton-split",
                       "fwdbwd  triton-bwd-ieee", "bwd core", "bwd (whole)", "pre-pass fwd",
                       "pre-pass bwd", "glue (rest)"):
            assert any(needle in line for line in rows), (shape, needle, out)
    assert "recompute backward / with the Triton backward" in out


def test_bench_resources_refuses_the_interpreter(monkeypatch):
    """`bench resources` compiles real kernels; under TRITON_INTERPRET=1 it says how to run it
    (its sm_90 build itself is tests/kernels/test_sm90_build.py, in a process without the interpreter)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(SystemExit, match="unset TRITON_INTERPRET"):
        main(["bench", "resources", "--quick"])
