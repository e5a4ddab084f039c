"""Two CPU processes through `accelerate launch` (gloo): different data per rank, time strata that
tile the global batch once per step, and identical parameters on both ranks at the end."""
import json
import os
import socket
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest

from diffmamba.train.batches import epoch_permutation

from train_helpers import REPO, TINY_CONFIG, micro_overrides


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_two_processes_split_the_data_and_the_time_strata(tiny_data, tmp_path):
    out = str(tmp_path / "ddp")
    steps, global_batch, eps = 3, 8, 1e-3
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()),
               os.path.join(REPO, "scripts", "train.py"), "--config", TINY_CONFIG, "--out", out, "--no-progress",
               "--debug-batches",
               # micro 2 x 2 accumulation steps x 2 processes = 8
               *micro_overrides(tiny_data, max_steps=steps, global_batch_size=global_batch, micro_batch_size=2,
                                eval_every=3, save_every=3),
               f"objective.sampling_eps={eps}"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]

    logs = [read(os.path.join(out, "debug", f"rank{rank}.jsonl")) for rank in range(2)]
    header = logs[0][0]
    assert header["world_size"] == 2 and logs[1][0]["rank"] == 1
    indices, times = defaultdict(dict), defaultdict(list)
    for log in logs:
        for record in log[1:]:
            if "indices" in record:
                indices[record["step"]][(record["rank"], record["accum"])] = record["indices"]
            elif "t" in record:
                times[record["step"]] += record["t"]
    order = epoch_permutation(header["dataset_rows"], header["seed"], 0)
    for step in range(steps):
        micro = indices[step]
        assert len(micro) == 4 and all(len(rows) == 2 for rows in micro.values())
        rank_rows = [{i for (r, _), rows in micro.items() if r == rank for i in rows} for rank in range(2)]
        assert not rank_rows[0] & rank_rows[1]  # the ranks read different rows
        assert sorted(rank_rows[0] | rank_rows[1]) == sorted(order[step * global_batch:(step + 1) * global_batch])
        # One diffusion time per stratum [k/8, (k+1)/8) of the global batch, before the eps shift.
        u = (np.array(times[step]) - eps) / (1 - eps)
        assert sorted(np.floor(u * global_batch).astype(int).tolist()) == list(range(global_batch))

    finals = [log[-1] for log in logs]
    assert finals[0]["final"] and finals[0]["params_sha256"] == finals[1]["params_sha256"]
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]  # written once, by the main process
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in records if "val_loss" in r] == [3]

    from diffmamba.model import DiffMamba

    assert DiffMamba.from_pretrained(os.path.join(out, "final")).config.vocab_size == 300
