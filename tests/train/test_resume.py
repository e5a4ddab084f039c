"""kill -9 in the middle of a run, then --resume: the loss trajectory must equal the uninterrupted
run's, step by step (bit for bit on CPU; the assert allows 1e-6)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY_CONFIG, micro_overrides

STEPS = 40


def command(out, tiny_data, *extra):
    return [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--config", TINY_CONFIG, "--out", out,
            "--no-progress", *micro_overrides(tiny_data, max_steps=STEPS, save_every=5, keep_last=2, eval_every=10),
            *extra]


def environment():
    # The same thread count in every run: a reduction split differently rounds differently.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_to_end(out, tiny_data, *extra):
    done = subprocess.run(command(out, tiny_data, *extra), env=environment(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    return train, val


@pytest.mark.slow
def test_kill_9_then_resume_continues_exactly(tiny_data, tmp_path):
    reference = str(tmp_path / "reference")
    run_to_end(reference, tiny_data)

    interrupted = str(tmp_path / "interrupted")
    process = subprocess.Popen(command(interrupted, tiny_data), env=environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    latest = os.path.join(interrupted, "checkpoints", "latest")
    deadline = time.monotonic() + 240

    def logged_steps():
        try:
            return max((step for step, _ in metrics(interrupted)[0]), default=0)
        except (OSError, ValueError):  # not there yet, or a line half written
            return 0

    # Kill after the first checkpoint (step 5) and a few steps more, so the resumed run must also
    # drop the metrics the killed run wrote after its checkpoint.
    while not (os.path.exists(latest) and logged_steps() >= 7) and process.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed: " + process.stderr.read().decode()[-2000:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(interrupted, "final"))
    killed_at = max(step for step, _ in metrics(interrupted)[0])
    assert killed_at < STEPS

    run_to_end(interrupted, tiny_data, "--resume")
    (ref_train, ref_val), (got_train, got_val) = metrics(reference), metrics(interrupted)
    assert [s for s, _ in got_train] == list(range(1, STEPS + 1))  # every step logged once, none lost
    assert [s for s, _ in got_val] == [10, 20, 30, 40]
    for (step, want), (_, got) in zip(ref_train + ref_val, got_train + got_val):
        assert got == pytest.approx(want, abs=1e-6), f"step {step}: {got} != {want}"
    print(f"killed after step {killed_at}; max |diff| = "
          f"{max(abs(a[1] - b[1]) for a, b in zip(ref_train + ref_val, got_train + got_val)):.3g}")
