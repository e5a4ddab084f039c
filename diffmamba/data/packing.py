"""Packing token ids into fixed-length rows, and the document-level train/validation split.

Pure numpy, shared by training data (datasets.py) and evaluation so both cut text the same way.
"""
from __future__ import annotations

import math

import numpy as np

SPLIT_WINDOW_CAP = 1024  # the guaranteed validation document is looked for among this many first documents


# ---------------------------------------------------------------------- the split rule

def _unit_hash(seed: int, indices: np.ndarray) -> np.ndarray:
    """A seeded uniform number in [0, 1) per document index (splitmix64; identical everywhere)."""
    with np.errstate(over="ignore"):
        z = (indices.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed % (1 << 63))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def split_window(val_fraction: float) -> int:
    return min(math.ceil(1.0 / val_fraction), SPLIT_WINDOW_CAP)


def validation_mask(indices: np.ndarray, seed: int, val_fraction: float, guaranteed: int) -> np.ndarray:
    """True for the documents (by global index) that belong to validation."""
    mask = _unit_hash(seed, indices) < val_fraction
    return mask | (indices == guaranteed)


def guaranteed_validation_doc(n_in_window: int, seed: int, val_fraction: float) -> int:
    """The document that is always in validation: lowest hash among the first window's documents."""
    return int(np.argmin(_unit_hash(seed, np.arange(n_in_window))))


# ---------------------------------------------------------------------- packing

class WrapPacker:
    """MDLM wrap packing with a carry: documents (each + EOS) are concatenated and cut into rows.
    Pushing documents in any grouping gives the same rows as pushing them all at once."""

    def __init__(self, seq_len: int, eos_id: int):
        self.seq_len, self.eos = seq_len, np.array([eos_id], dtype=np.int64)
        self.carry = np.zeros(0, dtype=np.int64)

    def push(self, docs: list[np.ndarray]) -> np.ndarray:
        parts = [self.carry]
        for doc in docs:
            parts += [np.asarray(doc, dtype=np.int64), self.eos]
        stream = np.concatenate(parts)
        n_rows = len(stream) // self.seq_len
        self.carry = stream[n_rows * self.seq_len:].copy()
        return stream[: n_rows * self.seq_len].reshape(n_rows, self.seq_len)


def pad_rows(docs: list[np.ndarray], seq_len: int, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """One row per document: tokens + EOS, truncated to seq_len, right-padded with EOS.
    Returns (rows [n, seq_len] int64, lengths [n]: how many leading positions are valid)."""
    rows = np.full((len(docs), seq_len), eos_id, dtype=np.int64)
    lengths = np.zeros(len(docs), dtype=np.int32)
    for i, doc in enumerate(docs):
        n = min(len(doc), seq_len)
        rows[i, :n] = doc[:n]
        lengths[i] = min(len(doc) + 1, seq_len)  # + the EOS when it fits
    return rows, lengths
