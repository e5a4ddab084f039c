"""What the training loop reports: ``metrics.jsonl``, optional TensorBoard, and the MFU estimate."""
from __future__ import annotations

import json
import math
import os
from typing import Optional

import torch

from diffmamba.core.errors import UserError
from diffmamba.core.io import write_text

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, matched against torch.cuda.get_device_name().
# First match wins, so the more specific names come first. Unknown devices report MFU as n/a.
BF16_PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM / NVL
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
)


def device_peak_flops(device: torch.device) -> Optional[float]:
    """The dense bf16 peak of one accelerator, or None on CPU / an unknown GPU (MFU then says n/a)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in BF16_PEAK_FLOPS:
        if key in name:
            return flops
    return None


def model_flops_utilization(flops_per_token: float, tokens_per_s: float, peak: Optional[float],
                            world_size: int) -> Optional[float]:
    """Achieved training FLOP/s over the peak of all ``world_size`` devices (None when the peak is unknown)."""
    if peak is None or not tokens_per_s:
        return None
    return flops_per_token * tokens_per_s / (peak * world_size)


def format_mfu(mfu: Optional[float]) -> str:
    return "n/a" if mfu is None else f"{100 * mfu:.1f}%"


class MetricsLog:
    """JSON lines in ``DIR/metrics.jsonl`` (one object per log event, always with ``step``) and, with
    ``tensorboard=True``, scalars under ``DIR/tensorboard``. Only the main process writes.

    When a run resumes at step ``s``, lines after ``s`` (written by the interrupted run after its last
    checkpoint) are dropped, so the file reads as one uninterrupted run."""

    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool, resume_step: Optional[int]):
        self.enabled = enabled
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.writer = None
        if not enabled:
            return
        if resume_step is None:
            open(self.path, "w").close()
        else:
            self._truncate_after(resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # lazy: optional dependency (tensorboard, only when enabled)
            except ImportError:
                raise UserError("train.tensorboard is true but TensorBoard is not installed; "
                                "`pip install tensorboard` or set train.tensorboard=false") from None
            # purge_step drops events the interrupted run wrote after the checkpoint we resume from.
            self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"),
                                        purge_step=None if resume_step is None else resume_step + 1)

    def _truncate_after(self, step: int) -> None:
        kept = []
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8", errors="replace") as f:  # damaged lines are dropped below
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:  # a line cut by the crash
                        continue
                    at = record.get("step", 0) if isinstance(record, dict) else None
                    if isinstance(at, int) and at <= step:
                        kept.append(line if line.endswith("\n") else line + "\n")
        write_text(self.path, "".join(kept))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
