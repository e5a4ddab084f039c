"""Device and dtype choices shared by sampling, evaluation and benchmarks."""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

from diffmamba.core.errors import UserError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def triton_interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1): the CPU tests, and
    the benchmarks' ``--interpreter`` harness checks."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_device(device: Optional[str]) -> torch.device:
    """'auto' (or None) = CUDA when available, else CPU; a CUDA request without CUDA is a UserError."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device} requested but CUDA is not available; pass --device cpu")
    return dev


def resolve_dtype(dtype: Optional[str], device: torch.device) -> torch.dtype:
    """'auto' = bfloat16 on CUDA, float32 on CPU (as training's mixed_precision=auto)."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose auto, float32, bfloat16 or float16")
    return DTYPES[dtype]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for inference: weights stay float32 (as trained), matmuls run in ``dtype``."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
