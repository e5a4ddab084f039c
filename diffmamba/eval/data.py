"""Validation tokens for evaluation, identical for every system compared.

- Default: the validation split of the checkpoint's run config (``run_config.yaml``), rebuilt with
  ``diffmamba.data.build_datasets`` and the checkpoint's tokenizer: the same documents, packing and
  ``seq_len`` the model was validated on during training.
- ``--data PATH``: every document of a local text file (one per blank-line paragraph), a folder of
  ``.txt`` files (one per file) or a JSON-lines file (``"text"`` field), tokenised with the
  checkpoint's tokenizer and packed like the run config says (wrap or pad, ``seq_len``).

``max_rows`` caps the rows (the first ones, deterministic) for quick CPU runs; the report states it.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import torch

from diffmamba.core.errors import UserError
from diffmamba.data.packing import WrapPacker, pad_rows
from diffmamba.data.textfiles import check_text_file, iter_documents


@dataclass
class EvalData:
    rows: torch.Tensor  # [N, T] int64
    valid: Optional[torch.Tensor]  # [N, T] bool, False on padding (pad packing) or None
    info: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.valid.sum()) if self.valid is not None else self.rows.numel()


def _read_documents(path: str) -> list[str]:
    """The documents of ``--data``, read like training reads data files (diffmamba/data/textfiles.py):
    non-UTF-8, binary, empty or oversized files are refused with the same message."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "**", "*.txt"), recursive=True))
        if not files:
            raise UserError(f"--data {path}: the folder holds no .txt files; pass a text file, a .jsonl file "
                            "or a folder of .txt files")
        for f in files:
            check_text_file(f, "document")
        return [doc for f in files for doc in iter_documents(f, "document")]
    if not os.path.isfile(path):
        raise UserError(f"--data {path} does not exist; pass a text file, a .jsonl file or a folder of .txt files")
    if path.endswith((".jsonl", ".json")):
        check_text_file(path, "line")
        docs = []
        for n, line in enumerate(iter_documents(path, "line"), 1):
            try:
                docs.append(str(json.loads(line)["text"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"--data {path}: record {n} is not a JSON object with a 'text' field; "
                                "write one {\"text\": ...} object per line") from None
        return docs
    check_text_file(path, "paragraph")
    return list(iter_documents(path, "paragraph"))


def pack_documents(docs: list[str], tokenizer, seq_len: int, packing: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Tokenise and pack documents exactly like training does (``diffmamba.data.packing``)."""

    ids = [np.asarray(x, dtype=np.int64) for x in tokenizer.encode_batch(docs)]
    if packing == "wrap":
        return WrapPacker(seq_len, tokenizer.eos_id).push(ids), None
    rows, lengths = pad_rows(ids, seq_len, tokenizer.eos_id)
    return rows, np.arange(seq_len)[None, :] < lengths[:, None]


def load_eval_data(ckpt, data_path: Optional[str] = None, max_rows: int = 0, seq_len: Optional[int] = None,
                   progress: bool = True) -> EvalData:
    """Validation rows for ``ckpt`` (see the module docstring). Raises ``UserError`` when there are none."""
    cfg = ckpt.run_config.data if ckpt.run_config is not None else None
    if cfg is None and data_path is None:
        raise UserError(f"{ckpt.path} has no run_config.yaml, so its validation split cannot be rebuilt; "
                        "pass --data PATH (and --seq-len N) to evaluate on your own text")
    length = seq_len or (cfg.seq_len if cfg is not None else None)
    if length is None:
        raise UserError("--data needs --seq-len N when the checkpoint has no run_config.yaml")
    packing = cfg.packing if cfg is not None else "wrap"
    if data_path is not None:
        docs = [d for d in _read_documents(data_path) if d]
        if not docs:
            raise UserError(f"--data {data_path} holds no text (empty validation set); pass a file with some text")
        rows, valid = pack_documents(docs, ckpt.tokenizer, length, packing)
        info = {"source": os.path.abspath(data_path), "documents": len(docs), "config_from": "--data",
                "seq_len": length, "packing": packing}
    else:

        from diffmamba.data import build_datasets  # lazy: Hugging Face datasets, not needed by `eval speed`
        data_cfg = replace(cfg, seq_len=length, streaming=False)
        _, val = build_datasets(data_cfg, ckpt.tokenizer, progress=progress)
        rows = np.asarray(val.tokens, dtype=np.int64)
        valid = (np.arange(length)[None, :] < np.asarray(val.lengths)[:, None]) if val.lengths is not None else None
        info = {"source": cfg.source, "documents": val.info.get("documents"), "config_from": ckpt.run_config_path,
                "seq_len": length, "packing": packing, "val_fraction": cfg.val_fraction, "data_seed": cfg.seed}
    total_rows = int(rows.shape[0])
    if max_rows and total_rows > max_rows:
        rows = rows[:max_rows]
        valid = valid[:max_rows] if valid is not None else None
    if rows.shape[0] == 0:
        raise UserError(f"the validation set is empty ({info['source']} gives no rows of {length} tokens); "
                        "lower --seq-len, use more text, or pass --data PATH")
    data = EvalData(torch.from_numpy(np.ascontiguousarray(rows)),
                    torch.from_numpy(np.ascontiguousarray(valid)) if valid is not None else None, info)
    info.update(rows=int(rows.shape[0]), rows_available=total_rows, tokens=data.num_tokens)
    return data
