"""Memory limits: estimate what a request will allocate *before* allocating it, and refuse past a
limit with one line naming the limit and how to raise it.

The limit is ``--max-memory-gb`` where a command has it, else the ``DIFFMAMBA_MAX_MEMORY_GB``
environment variable, else half of this machine's RAM (on CUDA: 90% of the device's memory, where
the tensors live). The estimates are deliberately simple upper-end figures, measured on CPU:
they exist to stop requests that would take tens of GB (``[MASK:500000]``, ``--length 10000000``,
a 5 GB single-line document), not to predict the last megabyte.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from diffmamba.core.errors import UserError

ENV = "DIFFMAMBA_MAX_MEMORY_GB"
GB = 1024 ** 3
RAM_FRACTION = 0.5

# Sampling, per canvas position: logits [V+1] in float32 plus the float64 copies the samplers make
# (probabilities, Gumbel noise, scores) ~ 40 bytes per vocabulary entry, and the trunk's activations
# of one layer at a time (both directions, expanded width) ~ 200 bytes per model dimension.
# Measured: vocab 301, d_model 32 -> 16 KB per position (formula: 18 KB).
BYTES_PER_VOCAB_ENTRY = 40
BYTES_PER_MODEL_DIM = 200
# Bookkeeping per canvas position (Python lists while building the canvas, token/mask tensors).
BYTES_PER_POSITION = 64
# Tokenising one document holds the text, its Arrow copy and the tokenizer's per-token records
# (ids, offsets, token strings): about 40 bytes per byte of text.
BYTES_PER_TEXT_BYTE = 40


def ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * GB


def limit_bytes(flag_value: Optional[float] = None, device: str = "cpu") -> tuple[int, str]:
    """(limit in bytes, where it comes from)."""
    if flag_value is not None:
        if flag_value <= 0:
            raise UserError(f"--max-memory-gb must be > 0, got {flag_value}")
        return int(flag_value * GB), "--max-memory-gb"
    env = os.environ.get(ENV)
    if env:
        try:
            value = float(env)
            if value <= 0:
                raise ValueError
        except ValueError:
            raise UserError(f"{ENV}={env!r} is not a positive number of GB; e.g. {ENV}=32") from None
        return int(value * GB), ENV
    if str(device).startswith("cuda"):
        index = torch.device(device).index or 0
        return int(0.9 * torch.cuda.get_device_properties(index).total_memory), "default: 90% of the GPU's memory"
    return int(RAM_FRACTION * ram_bytes()), f"default: {int(RAM_FRACTION * 100)}% of RAM"


def gb(n: float) -> str:
    """A byte count for messages: GB, or MB below one GB."""
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / 2 ** 20:.1f} MB"


def require(estimate: int, what: str, fix: str, flag_value: Optional[float] = None, device: str = "cpu",
            has_flag: bool = True) -> None:
    """Raise a UserError when ``estimate`` bytes exceed the limit."""
    limit, source = limit_bytes(flag_value, device)
    if estimate <= limit:
        return
    raise_with = f"--max-memory-gb N or {ENV}=N" if has_flag else f"{ENV}=N"
    raise UserError(f"{what} would need about {gb(estimate)} of memory, above the limit of {gb(limit)} ({source}); "
                    f"{fix}, or raise the limit with {raise_with}")


def sampling_bytes(mode: str, batch: int, length: int, prompt_length: int, vocab_size: int, d_model: int,
                   block_size: Optional[int] = None) -> int:
    """What sampling ``batch`` canvases of ``length`` positions allocates (see the constants above)."""
    per_position = BYTES_PER_VOCAB_ENTRY * (vocab_size + 1) + BYTES_PER_MODEL_DIM * d_model
    if mode == "ar":  # the prompt is prefilled at once, then one position at a time
        full = max(prompt_length, 1)
    elif mode == "block":  # one block (and its prefix state) at a time
        full = min(length, block_size or length)
    else:
        full = length
    return batch * (full * per_position + length * BYTES_PER_POSITION) + length * BYTES_PER_POSITION
