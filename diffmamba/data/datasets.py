"""Datasets: text -> documents -> train/validation split -> token ids -> fixed-length rows.

    tok = resolve_tokenizer(cfg.data)                 # "builtin" | "gpt2" | path
    train, val = build_datasets(cfg.data, tok)        # map-style; row = {"input_ids": int64 [seq_len]}
    loader = DataLoader(train, batch_size=8, shuffle=True)

Sources (``data.source``): ``"builtin"`` (or ``"builtin:bbc,kjv"``, see corpus.py); a local text /
JSON(L) / parquet file (optionally .gz), a folder of them, or a glob; otherwise a Hub dataset name
(``load_dataset(name, data.subset, split="train")``). Text files become one document per file when
there are several, and one per blank-line-separated paragraph when there is a single file
(``data.text_unit`` overrides).

Split: document ``i`` goes to validation when a seeded hash of ``i`` falls below ``val_fraction``;
in addition the lowest-hash document among the first ``min(ceil(1/val_fraction), 1024)`` always does,
so validation is never empty. The rule needs no global shuffle, so map-style and streaming modes
pick the same documents. The split happens on documents, before packing: no document leaks.

Packing (docs/masked-diffusion.md §3.1):
- ``"wrap"`` (MDLM): each document is followed by EOS, all are concatenated in order and cut into
  rows of ``seq_len``; the incomplete tail is dropped. Rows: ``input_ids``.
- ``"pad"``: one document per row, EOS appended, truncated to ``seq_len``, right-padded with EOS.
  Rows: ``input_ids`` and ``valid`` (bool, False on padding).

Caches (under ``data.cache_dir``, default ``~/.cache/diffmamba``): ``tokenized/`` holds each
source's token ids keyed by (source, tokenizer hash); ``datasets/`` holds the packed rows keyed by
that plus seq_len, packing and split settings, as ``.npy`` files read through memory maps. Writes
are atomic, but in multi-process runs build on the main process first
(``with accelerator.main_process_first(): build_datasets(...)``) to avoid duplicate work.
With ``data.streaming`` nothing is cached: rows are produced on the fly from an iterable source.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Iterator, Optional

import numpy as np
import torch

from diffmamba.core.io import staged_tree, write_json
from diffmamba.config import DataConfig
from diffmamba.data import corpus as corpus_lib
# Re-exported: evaluation packs its own text with the very same functions.
from diffmamba.data.packing import (WrapPacker, guaranteed_validation_doc, pad_rows, split_window,  # noqa: F401
                                    validation_mask)
from diffmamba.data.sources import hf_progress, iter_texts, load_source, non_empty, source_plan, text_column
from diffmamba.data.tokenizer import Tokenizer, load_tokenizer, train_bpe
from diffmamba.core.errors import UserError
import pyarrow.compute as pc
from datasets import Features, Sequence, Value
from tqdm.auto import tqdm

CACHE_VERSION = 1  # bump when tokenised or packed files change meaning
DOC_BATCH = 1000  # documents per tokenisation / packing step


# ---------------------------------------------------------------------- tokenizers

def resolve_tokenizer(data_cfg: DataConfig) -> Tokenizer:
    """The tokenizer a data config asks for. ``"builtin"`` trains a byte-level BPE of
    ``tokenizer_vocab_size`` on the built-in corpus once and caches it; anything else goes to
    ``load_tokenizer`` ("gpt2", a tokenizer.json, a folder, a Hub name)."""
    if data_cfg.tokenizer == "builtin":
        return builtin_tokenizer(data_cfg.tokenizer_vocab_size, data_cfg.cache_dir)
    return load_tokenizer(data_cfg.tokenizer)


def builtin_tokenizer(vocab_size: int, cache_dir: Optional[str] = None, sources=None, progress: bool = True) -> Tokenizer:
    """BPE trained on the built-in corpus, cached per (corpus content, vocab size)."""
    corpus = corpus_lib.build_corpus(sources=sources, progress=progress, cache_dir=cache_dir)
    folder = os.path.join(corpus_lib.cache_root(cache_dir), "tokenizers",
                          f"builtin-bpe{vocab_size}-{corpus_lib.corpus_fingerprint(corpus)}")
    if os.path.isfile(os.path.join(folder, "tokenizer.json")):
        return load_tokenizer(folder)
    n_docs = sum(e["documents"] for e in corpus["entries"].values())
    tok = train_bpe(corpus_lib.iter_corpus_texts(corpus), vocab_size, show_progress=progress, length=n_docs,
                    name=f"builtin-bpe{vocab_size}")
    tok.save(folder)
    return load_tokenizer(folder)


def _row_dtype(tok: Tokenizer):
    return np.uint16 if tok.mask_id < np.iinfo(np.uint16).max else np.int32


class PackedRows(torch.utils.data.Dataset):
    """Map-style dataset over one split of a packed cache folder (``SPLIT.npy``, memory-mapped).

    ``ds[i]`` -> ``{"input_ids": int64 [seq_len]}`` (+ ``"valid": bool [seq_len]`` in pad mode).
    Pickling sends only the folder name, so DataLoader workers (also spawned ones) map the file
    themselves instead of receiving a copy of the rows."""

    def __init__(self, folder: str, split: str, info: dict):
        self.folder, self.split, self.info = folder, split, info
        self._tokens = self._lengths = None
        self.seq_len = int(info["seq_len"])

    def _open(self) -> None:
        self._tokens = np.load(os.path.join(self.folder, f"{self.split}.npy"), mmap_mode="r")
        lengths_path = os.path.join(self.folder, f"{self.split}_lengths.npy")
        self._lengths = np.load(lengths_path) if os.path.isfile(lengths_path) else None

    @property
    def tokens(self) -> np.ndarray:
        """All rows, ``[rows, seq_len]`` (uint16 or int32, memory-mapped)."""
        if self._tokens is None:
            self._open()
        return self._tokens

    @property
    def lengths(self) -> Optional[np.ndarray]:
        """Valid positions per row in pad mode; None in wrap mode."""
        if self._tokens is None:
            self._open()
        return self._lengths

    def __len__(self) -> int:
        return int(self.info["rows"])

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        row = {"input_ids": torch.from_numpy(self.tokens[index].astype(np.int64))}
        if self.lengths is not None:
            row["valid"] = torch.arange(self.seq_len) < int(self.lengths[index])
        return row

    @property
    def num_tokens(self) -> int:
        """Tokens in all rows (padding excluded)."""
        return int(self.lengths.sum()) if self.lengths is not None else len(self) * self.seq_len

    def __getstate__(self):
        return {"folder": self.folder, "split": self.split, "info": self.info}

    def __setstate__(self, state):
        self.__init__(state["folder"], state["split"], state["info"])

    def __repr__(self) -> str:
        return f"PackedRows({self.split}, rows={len(self)}, seq_len={self.seq_len}, " \
               f"packing={self.info.get('packing')!r}, documents={self.info.get('documents')})"


# ---------------------------------------------------------------------- map-style build

def _key(*parts) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, *parts], sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _single_threaded_tokenizers(enabled: bool):
    """Worker processes fork; Rust tokenizer threads and fork() do not mix, so turn them off meanwhile."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    if enabled:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if enabled:
            if before is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = before


def _tokenize_batch(batch, tokenizer: Tokenizer, text_field: str):
    return {"ids": tokenizer.encode_batch(batch[text_field])}


def _tokenized(data_cfg: DataConfig, plan: dict, tok: Tokenizer, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [total] , offsets [n_docs + 1]) of every non-empty document, cached on disk."""
    root = corpus_lib.cache_root(data_cfg.cache_dir)
    key = _key(plan["fingerprint"], plan["text_field"], data_cfg.max_documents, tok.fingerprint)
    final = os.path.join(root, "tokenized", f"{plan['name'][:60]}-{key}")
    if not os.path.isfile(os.path.join(final, "offsets.npy")):
        with hf_progress(progress):
            _build_tokenized(data_cfg, plan, tok, final, progress)
    return np.load(os.path.join(final, "tokens.npy"), mmap_mode="r"), np.load(os.path.join(final, "offsets.npy"))


def _build_tokenized(data_cfg: DataConfig, plan: dict, tok: Tokenizer, final: str, progress: bool) -> None:
    raw = load_source(plan, streaming=False)
    field = text_column(raw, plan)
    raw = raw.select_columns([field])
    n_raw = len(raw)
    with hf_progress(False):  # a fraction of a second; its bar would only be noise
        raw = raw.filter(non_empty, input_columns=field, batched=True, keep_in_memory=True)
    if data_cfg.max_documents:
        raw = raw.select(range(min(data_cfg.max_documents, len(raw))))
    if len(raw) == 0:
        raise UserError(f"no text found in {plan.get('hub') or data_cfg.source} ({n_raw} records, all empty in "
                        f"column {field!r}); check data.source and data.text_field")
    with staged_tree(final) as tmp:
        # Worker processes only pay off on big sources; each one re-imports and re-builds the tokenizer.
        num_proc = max(1, min(data_cfg.num_proc, len(raw) // (4 * DOC_BATCH)))
        with _single_threaded_tokenizers(num_proc > 1):
            ids = raw.map(_tokenize_batch, batched=True, batch_size=DOC_BATCH, num_proc=num_proc,
                          fn_kwargs={"tokenizer": tok, "text_field": field}, remove_columns=[field],
                          features=Features({"ids": Sequence(Value("int32"))}),
                          cache_file_name=os.path.join(tmp, "ids.arrow"), desc=f"tokenising {plan['name']}")
        lengths = pc.list_value_length(ids.data.column("ids")).to_numpy().astype(np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.lib.format.open_memmap(os.path.join(tmp, "tokens.npy"), mode="w+", dtype=_row_dtype(tok),
                                           shape=(int(offsets[-1]),))
        position = 0
        for batch in ids.with_format("arrow").iter(batch_size=DOC_BATCH * 10):
            flat = batch.column("ids").combine_chunks().flatten().to_numpy()
            tokens[position: position + len(flat)] = flat
            position += len(flat)
        tokens.flush()
        del tokens, ids
        np.save(os.path.join(tmp, "offsets.npy"), offsets)
        for name in os.listdir(tmp):  # the intermediate Arrow shards are not needed any more
            if name.endswith(".arrow"):
                os.remove(os.path.join(tmp, name))
        write_json(os.path.join(tmp, "meta.json"), {
            "source": data_cfg.source, "tokenizer": tok.name, "tokenizer_fingerprint": tok.fingerprint,
            "documents": len(lengths), "tokens": int(offsets[-1])}, indent=1)


def _pack_split(tokens: np.ndarray, offsets: np.ndarray, doc_indices: np.ndarray, data_cfg: DataConfig,
                tok: Tokenizer, path: str, progress: bool) -> dict:
    """Write one split's rows to ``path`` (.npy), returning its summary."""
    lengths = offsets[doc_indices + 1] - offsets[doc_indices]
    seq_len = data_cfg.seq_len
    wrap = data_cfg.packing == "wrap"
    n_rows = int((lengths + 1).sum() // seq_len) if wrap else len(doc_indices)
    split = os.path.basename(path)[:-4]
    if n_rows == 0:
        raise UserError(f"data.seq_len {seq_len} yields no {split} rows from {data_cfg.source} ({int(lengths.sum())} "
                        f"tokens in {len(doc_indices)} {split} documents); lower data.seq_len, use data.packing=pad, "
                        "add text" + (", or raise data.val_fraction" if split == "validation"
                                      else ", or lower data.val_fraction"))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=_row_dtype(tok), shape=(n_rows, seq_len))
    row_lengths = None if wrap else np.zeros(n_rows, dtype=np.int32)
    packer = WrapPacker(seq_len, tok.eos_id)
    written = 0
    with tqdm(total=len(doc_indices), desc=f"packing {split}", unit=" docs",
              disable=not progress, leave=False) as bar:
        for start in range(0, len(doc_indices), DOC_BATCH):
            chunk = doc_indices[start: start + DOC_BATCH]
            docs = [tokens[offsets[i]: offsets[i + 1]] for i in chunk]
            if wrap:
                rows = packer.push(docs)
            else:
                rows, row_lengths[written: written + len(docs)] = pad_rows(docs, seq_len, tok.eos_id)
            out[written: written + len(rows)] = rows
            written += len(rows)
            bar.update(len(chunk))
    out.flush()
    assert written == n_rows, (written, n_rows)
    if row_lengths is not None:
        np.save(path[:-4] + "_lengths.npy", row_lengths)
    return {"rows": n_rows, "documents": len(doc_indices), "tokens": int(lengths.sum())}


def build_datasets(data_cfg: DataConfig, tokenizer, progress: bool = True):
    """Train and validation datasets for ``data_cfg``, tokenised with ``tokenizer`` (a Tokenizer or
    anything ``load_tokenizer`` accepts).

    Returns two ``PackedRows`` (map-style, cached), or two ``StreamingRows`` (iterable, no length)
    when ``data_cfg.streaming``. Raises ``UserError`` for missing/empty data or a ``seq_len`` that
    yields no rows."""
    tok = load_tokenizer(tokenizer)
    if data_cfg.streaming:
        return StreamingRows(data_cfg, tok, "train"), StreamingRows(data_cfg, tok, "validation")
    plan = source_plan(data_cfg, progress)
    root = corpus_lib.cache_root(data_cfg.cache_dir)
    key = _key(plan["fingerprint"], plan["text_field"], data_cfg.max_documents, tok.fingerprint, data_cfg.seq_len,
               data_cfg.packing, data_cfg.val_fraction, data_cfg.seed)
    final = os.path.join(root, "datasets", f"{plan['name'][:60]}-{key}")
    if not os.path.isfile(os.path.join(final, "meta.json")):
        tokens, offsets = _tokenized(data_cfg, plan, tok, progress)
        n_docs = len(offsets) - 1
        if n_docs < 2:
            raise UserError(f"only {n_docs} document in {data_cfg.source}; the train/validation split needs at "
                            "least 2: add text, or split a single file finer with data.text_unit=paragraph or line")
        indices = np.arange(n_docs)
        guaranteed = guaranteed_validation_doc(min(n_docs, split_window(data_cfg.val_fraction)), data_cfg.seed,
                                               data_cfg.val_fraction)
        is_val = validation_mask(indices, data_cfg.seed, data_cfg.val_fraction, guaranteed)
        meta = {"source": data_cfg.source, "tokenizer": tok.name, "tokenizer_fingerprint": tok.fingerprint,
                "seq_len": data_cfg.seq_len, "packing": data_cfg.packing, "val_fraction": data_cfg.val_fraction,
                "seed": data_cfg.seed}
        with staged_tree(final) as tmp:
            for split, chosen in (("train", ~is_val), ("validation", is_val)):
                meta[split] = _pack_split(tokens, offsets, indices[chosen], data_cfg, tok,
                                          os.path.join(tmp, f"{split}.npy"), progress)
            write_json(os.path.join(tmp, "meta.json"), meta, indent=1)
    return open_packed(final)


def open_packed(folder: str) -> tuple[PackedRows, PackedRows]:
    """The (train, validation) datasets of a packed cache folder."""
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    shared = {k: v for k, v in meta.items() if k not in ("train", "validation")}
    return tuple(PackedRows(folder, split, {**shared, **meta[split], "split": split, "folder": folder})
                 for split in ("train", "validation"))


# ---------------------------------------------------------------------- streaming

class StreamingRows(torch.utils.data.IterableDataset):
    """The same rows as ``build_datasets`` map-style (with one shard), produced on the fly for
    corpora larger than memory. Nothing is cached; every ``iter()`` re-reads the source.

    Sharding: DataLoader workers and ``shard(num_shards, index)`` (one per rank) split the work by
    batches of ``DOC_BATCH`` documents; each shard packs its own documents, so all shards together
    see every document exactly once."""

    def __init__(self, data_cfg: DataConfig, tokenizer: Tokenizer, split: str):
        self.data_cfg, self.tokenizer, self.split = data_cfg, tokenizer, split
        self.num_shards, self.shard_index = 1, 0

    def shard(self, num_shards: int, index: int) -> "StreamingRows":
        if not 0 <= index < num_shards:
            raise ValueError(f"shard index {index} not in [0, {num_shards})")
        self.num_shards, self.shard_index = num_shards, index
        return self

    def _split_documents(self) -> Iterator[str]:
        cfg = self.data_cfg
        docs = enumerate(iter_texts(cfg, progress=False))  # (global index, text) of non-empty documents
        window = []  # the first documents, held until the guaranteed validation doc is known
        for item in docs:
            window.append(item)
            if len(window) == split_window(cfg.val_fraction):
                break
        guaranteed = guaranteed_validation_doc(len(window), cfg.seed, cfg.val_fraction)
        want_val = self.split == "validation"

        def chosen(items):
            for index, text in items:
                in_val = bool(validation_mask(np.array([index]), cfg.seed, cfg.val_fraction, guaranteed)[0])
                if in_val == want_val:
                    yield text

        yield from chosen(window)
        yield from chosen(docs)

    def __iter__(self) -> Iterator[dict]:
        cfg, tok = self.data_cfg, self.tokenizer
        worker = torch.utils.data.get_worker_info()
        n_workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        total, mine = self.num_shards * n_workers, self.shard_index * n_workers + worker_id
        packer = WrapPacker(cfg.seq_len, tok.eos_id)
        batch, batch_number, produced = [], 0, 0
        for text in self._split_documents():
            batch.append(text)
            if len(batch) == DOC_BATCH:
                if batch_number % total == mine:
                    for row in self._rows(batch, packer):
                        produced += 1
                        yield row
                batch, batch_number = [], batch_number + 1
        if batch and batch_number % total == mine:
            for row in self._rows(batch, packer):
                produced += 1
                yield row
        if produced == 0 and total == 1:
            raise UserError(f"data.seq_len {cfg.seq_len} yields no {self.split} rows from {cfg.source}; lower "
                            "data.seq_len, use data.packing=pad or add text")

    def _rows(self, texts: list[str], packer: WrapPacker) -> Iterator[dict]:
        docs = [np.asarray(ids, dtype=np.int64) for ids in self.tokenizer.encode_batch(texts)]
        if self.data_cfg.packing == "wrap":
            for row in packer.push(docs):
                yield {"input_ids": torch.from_numpy(row.copy())}
        else:
            rows, lengths = pad_rows(docs, self.data_cfg.seq_len, self.tokenizer.eos_id)
            positions = torch.arange(self.data_cfg.seq_len)
            for row, length in zip(rows, lengths):
                yield {"input_ids": torch.from_numpy(row.copy()), "valid": positions < int(length)}
