"""`diffmamba bench`: each benchmark runs from the CLI on tiny CPU shapes and prints its environment."""
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

