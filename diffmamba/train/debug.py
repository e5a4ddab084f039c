"""``--debug-batches``: what each process did, for tests and for debugging a distributed run.

``OUT/debug/rank<R>.jsonl`` gets a header (world size, dataset rows, global batch, seed), then per
micro-batch the dataset indices it read and, for diffusion, its times t, and at the end a SHA-256
of the parameters: equal on every rank after a correct data-parallel run.
"""
from __future__ import annotations

import hashlib
import json
import os

from torch import nn


class DebugLog:
    def __init__(self, out_dir: str, rank: int, header: dict):
        folder = os.path.join(out_dir, "debug")
        os.makedirs(folder, exist_ok=True)
        self.rank = rank
        self.file = open(os.path.join(folder, f"rank{rank}.jsonl"), "a")
        self.write({"rank": rank, **header})

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")

    def batch_indices(self, step: int, rows_per_accumulation_step: list[list[int]]) -> None:
        for a, rows in enumerate(rows_per_accumulation_step):
            self.write({"step": step, "rank": self.rank, "accum": a, "indices": rows})

    def parameter_checksum(self, model: nn.Module) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        self.write({"final": True, "rank": self.rank, "params_sha256": digest.hexdigest()})

    def close(self) -> None:
        self.file.close()
