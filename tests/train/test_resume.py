"""kill -9 in the middle of a run, then --resume: the loss trajectory must equal the uninterrupted
run's, step by step (bit for bit on CPU; the assert allows 1e-6)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from train_helpers import REPO, TINY_CONFIG, micro_overrides

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


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    """Metrics of the uninterrupted run."""
    out = str(tmp_path_factory.mktemp("reference") / "run")
    run_to_end(out, tiny_data)
    return metrics(out)


def assert_same_trajectory(reference, out):
    (ref_train, ref_val), (got_train, got_val) = reference, metrics(out)
    assert [s for s, _ in got_train] == list(range(1, STEPS + 1))  # every step logged once, none lost
    assert [s for s, _ in got_val] == [10, 20, 30, 40]
    for (step, want), (_, got) in zip(ref_train + ref_val, got_train + got_val):
        assert got == pytest.approx(want, abs=1e-6), f"step {step}: {got} != {want}"
    return max(abs(a[1] - b[1]) for a, b in zip(ref_train + ref_val, got_train + got_val))


def start(out, tiny_data, log_path):
    """The run in the background, its stderr into a file (a pipe nobody reads could fill up and block it)."""
    with open(log_path, "w") as log:
        return subprocess.Popen(command(out, tiny_data), env=environment(), stdout=subprocess.DEVNULL, stderr=log)


def wait_for(condition, process, log_path, seconds=240):
    deadline = time.monotonic() + seconds
    while not condition() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(log_path) as f:
        assert process.poll() is None, "the run ended before it could be stopped: " + f.read()[-2000:]


@pytest.mark.slow
def test_kill_9_then_resume_continues_exactly(tiny_data, tmp_path, reference):
    interrupted = str(tmp_path / "interrupted")
    log = str(tmp_path / "stderr.txt")
    process = start(interrupted, tiny_data, log)
    latest = os.path.join(interrupted, "checkpoints", "latest")
    # Kill after the first checkpoint (step 5) and a few steps more, so the resumed run must also
    # drop the metrics the killed run wrote after its checkpoint.
    wait_for(lambda: os.path.exists(latest) and logged_steps(interrupted) >= 7, process, log)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(interrupted, "final"))
    killed_at = max(step for step, _ in metrics(interrupted)[0])
    assert killed_at < STEPS

    run_to_end(interrupted, tiny_data, "--resume")
    print(f"killed after step {killed_at}; max |diff| = {assert_same_trajectory(reference, interrupted):.3g}")


def logged_steps(out):
    try:
        return max((step for step, _ in metrics(out)[0]), default=0)
    except (OSError, ValueError):  # not there yet, or a line half written
        return 0


@pytest.mark.slow
def test_sigterm_saves_the_step_in_flight_and_resume_continues_exactly(tiny_data, tmp_path, reference):
    out = str(tmp_path / "preempted")
    log = str(tmp_path / "stderr.txt")
    process = start(out, tiny_data, log)
    wait_for(lambda: logged_steps(out) >= 6, process, log)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    with open(log) as f:
        err = f.read()
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    stopped_at = logged_steps(out)
    assert f"stopped by a signal after step {stopped_at}" in err
    with open(os.path.join(out, "checkpoints", "latest")) as f:
        assert f.read().strip() == f"step_{stopped_at:07d}"  # nothing lost: the last step is saved
    run_to_end(out, tiny_data, "--resume")
    print(f"stopped after step {stopped_at}; max |diff| = {assert_same_trajectory(reference, out):.3g}")
