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

Packing (masked-diffusion spec §3.1):
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
import glob
import hashlib
import json
import math
import os
import re
import shutil
from typing import Iterator, Optional

import numpy as np
import torch

from diffmamba.config import DataConfig
from diffmamba.data import corpus as corpus_lib
from diffmamba.data.tokenizer import Tokenizer, load_tokenizer, train_bpe
from diffmamba.errors import UserError

CACHE_VERSION = 1  # bump when tokenised or packed files change meaning
TEXT_EXTENSIONS = (".txt", ".text", ".md", ".rst")
BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", **{e: "text" for e in TEXT_EXTENSIONS}}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
SPLIT_WINDOW_CAP = 1024
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


# ---------------------------------------------------------------------- sources

def _strip_compression(path: str) -> str:
    for ext in COMPRESSIONS:
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def _builder_of(path: str) -> Optional[str]:
    return BUILDERS.get(os.path.splitext(_strip_compression(path))[1].lower())


def local_files(source: str) -> Optional[list[str]]:
    """Data files named by ``source`` (a file, a folder searched recursively, or a glob), sorted;
    None when ``source`` names nothing local (then it may be a Hub dataset)."""
    path = os.path.expanduser(source)
    if os.path.isfile(path):
        return [os.path.abspath(path)]
    if os.path.isdir(path):
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [os.path.join(root, n) for n in names if not n.startswith(".") and _builder_of(n)]
        if not files:
            raise UserError(f"no text found in {source}: no {', '.join(sorted(BUILDERS))} files (optionally .gz) "
                            "in that folder; point data.source at files holding your text")
        return sorted(os.path.abspath(f) for f in files)
    if glob.has_magic(path):
        files = sorted(os.path.abspath(f) for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise UserError(f"no text found in {source}: the pattern matches no files; check the path")
        return files
    if source.startswith((".", "/", "~")) or _builder_of(source) or source.count("/") > 1:
        raise UserError(f"data source {source} does not exist; pass an existing file, folder or glob, "
                        "'builtin', or a Hub dataset name")
    return None


def _text_unit(data_cfg: DataConfig, files: list[str]) -> str:
    """HF text builder's ``sample_by``: whole files, paragraphs or lines."""
    unit = data_cfg.text_unit
    if unit == "auto":
        unit = "file" if len(files) > 1 else "paragraph"
    return {"file": "document", "paragraph": "paragraph", "line": "line"}[unit]


def _source_plan(data_cfg: DataConfig, progress: bool = True) -> dict:
    """How to load the source, plus a fingerprint of its content for the cache keys."""
    source = data_cfg.source
    if corpus_lib.is_builtin(source):
        corpus = corpus_lib.build_corpus(sources=corpus_lib.parse_builtin_source(source), progress=progress,
                                         cache_dir=data_cfg.cache_dir)
        return {"builder": "json", "files": corpus_lib.corpus_files(corpus), "kwargs": {}, "text_field": "text",
                "name": "builtin-" + "-".join(corpus["sources"]), "fingerprint": corpus_lib.corpus_fingerprint(corpus)}
    files = local_files(source)
    if files is None:
        return {"hub": source, "subset": data_cfg.subset, "text_field": data_cfg.text_field,
                "name": re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{source}-{data_cfg.subset or ''}").strip("-"),
                "fingerprint": hashlib.sha256(f"{source}|{data_cfg.subset}".encode()).hexdigest()[:16]}
    builders = sorted({_builder_of(f) for f in files} - {None})
    if len(builders) != 1:
        raise UserError(f"{source} mixes file kinds ({', '.join(builders) or 'none recognised'}); "
                        f"point data.source at one kind: {', '.join(sorted(BUILDERS))}")
    builder = builders[0]
    kwargs = {"sample_by": _text_unit(data_cfg, files)} if builder == "text" else {}
    stat = [(f, os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files]
    fingerprint = hashlib.sha256(json.dumps([stat, kwargs]).encode()).hexdigest()[:16]
    name = os.path.basename(os.path.normpath(os.path.expanduser(source))) or "data"
    return {"builder": builder, "files": files, "kwargs": kwargs, "fingerprint": fingerprint,
            "text_field": "text" if builder == "text" else data_cfg.text_field,
            "name": re.sub(r"[^A-Za-z0-9_.-]+", "-", name)}


@contextlib.contextmanager
def _hf_progress(enabled: bool):
    """Show or hide Hugging Face datasets' own progress bars for the duration of a block."""
    from datasets.utils import logging as hf_logging
    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def _load(plan: dict, streaming: bool):
    """The raw HF dataset (all columns) of a plan."""
    import datasets
    datasets.logging.set_verbosity_error()
    try:
        if "hub" in plan:
            return datasets.load_dataset(plan["hub"], plan["subset"], split="train", streaming=streaming)
        return datasets.load_dataset(plan["builder"], data_files=plan["files"], split="train",
                                     streaming=streaming, **plan["kwargs"])
    except UserError:
        raise
    except Exception as e:
        where = plan.get("hub") or ", ".join(plan["files"][:3])
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        hint = ("it is not a local path, and the Hub is unreachable or has no such dataset; pass a local file/folder "
                "or 'builtin'") if "hub" in plan else "check that the files are valid"
        raise UserError(f"could not load data from {where}: {detail}; {hint}") from None


def _text_column(dataset, plan: dict) -> str:
    field = plan["text_field"]
    columns = dataset.column_names
    if columns is None:  # a streaming dataset whose features are unknown until read
        columns = list(next(iter(dataset)).keys())
    if field not in columns:
        raise UserError(f"column {field!r} not found in {plan.get('hub') or plan['name']}; its columns are "
                        f"{', '.join(columns)}: set data.text_field to the one holding the text")
    return field


def _non_empty(texts) -> list[bool]:
    return [bool(t and t.strip()) for t in texts]


def iter_texts(data_cfg: DataConfig, progress: bool = True) -> Iterator[str]:
    """Every non-empty document text of ``data_cfg.source``, in order, streamed (for tokenizer training)."""
    plan = _source_plan(data_cfg, progress)
    raw = _load(plan, streaming=True)
    field = _text_column(raw, plan)
    count = 0
    for record in raw:
        text = record.get(field)
        if text and text.strip():
            yield text
            count += 1
            if data_cfg.max_documents and count >= data_cfg.max_documents:
                return
    if count == 0:
        raise UserError(f"no text found in {data_cfg.source} (column {field!r}); check the source and text field")


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


def _row_dtype(tok: Tokenizer):
    return np.uint16 if tok.mask_id < np.iinfo(np.uint16).max else np.int32


class PackedRows(torch.utils.data.Dataset):
    """Map-style dataset over packed rows (memory-mapped ``.npy``).

    ``ds[i]`` -> ``{"input_ids": int64 [seq_len]}`` (+ ``"valid": bool [seq_len]`` in pad mode)."""

    def __init__(self, tokens: np.ndarray, lengths: Optional[np.ndarray], info: dict):
        self.tokens, self.lengths, self.info = tokens, lengths, info
        self.seq_len = tokens.shape[1]

    def __len__(self) -> int:
        return self.tokens.shape[0]

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
        return int(self.lengths.sum()) if self.lengths is not None else self.tokens.size

    def __repr__(self) -> str:
        return f"PackedRows({self.info.get('split')}, rows={len(self)}, seq_len={self.seq_len}, " \
               f"packing={self.info.get('packing')!r}, documents={self.info.get('documents')})"


# ---------------------------------------------------------------------- map-style build

def _key(*parts) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, *parts], sort_keys=True).encode()).hexdigest()[:16]


def _publish(tmp_dir: str, final_dir: str) -> None:
    """Move a finished build into place; if another process got there first, keep theirs."""
    try:
        os.rename(tmp_dir, final_dir)
    except OSError:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if not os.path.isdir(final_dir):
            raise


def _tokenize_batch(batch, tokenizer: Tokenizer, text_field: str):
    return {"ids": tokenizer.encode_batch(batch[text_field])}


def _tokenized(data_cfg: DataConfig, plan: dict, tok: Tokenizer, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [total] , offsets [n_docs + 1]) of every non-empty document, cached on disk."""
    root = corpus_lib.cache_root(data_cfg.cache_dir)
    key = _key(plan["fingerprint"], plan["text_field"], data_cfg.max_documents, tok.fingerprint)
    final = os.path.join(root, "tokenized", f"{plan['name'][:60]}-{key}")
    if not os.path.isfile(os.path.join(final, "offsets.npy")):
        with _hf_progress(progress):
            _build_tokenized(data_cfg, plan, tok, final, progress)
    return np.load(os.path.join(final, "tokens.npy"), mmap_mode="r"), np.load(os.path.join(final, "offsets.npy"))


def _build_tokenized(data_cfg: DataConfig, plan: dict, tok: Tokenizer, final: str, progress: bool) -> None:
    from datasets import Features, Sequence, Value
    raw = _load(plan, streaming=False)
    field = _text_column(raw, plan)
    raw = raw.select_columns([field])
    n_raw = len(raw)
    with _hf_progress(False):  # a fraction of a second; its bar would only be noise
        raw = raw.filter(_non_empty, input_columns=field, batched=True, keep_in_memory=True)
    if data_cfg.max_documents:
        raw = raw.select(range(min(data_cfg.max_documents, len(raw))))
    if len(raw) == 0:
        raise UserError(f"no text found in {plan.get('hub') or data_cfg.source} ({n_raw} records, all empty in "
                        f"column {field!r}); check data.source and data.text_field")
    tmp = f"{final}.tmp{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    # Worker processes only pay off on big sources; each one re-imports and re-builds the tokenizer.
    num_proc = max(1, min(data_cfg.num_proc, len(raw) // (4 * DOC_BATCH)))
    if num_proc > 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # rayon threads and fork() do not mix
    ids = raw.map(_tokenize_batch, batched=True, batch_size=DOC_BATCH, num_proc=num_proc,
                  fn_kwargs={"tokenizer": tok, "text_field": field}, remove_columns=[field],
                  features=Features({"ids": Sequence(Value("int32"))}),
                  cache_file_name=os.path.join(tmp, "ids.arrow"), desc=f"tokenising {plan['name']}")
    import pyarrow.compute as pc
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
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump({"source": data_cfg.source, "tokenizer": tok.name, "tokenizer_fingerprint": tok.fingerprint,
                   "documents": len(lengths), "tokens": int(offsets[-1])}, f, indent=1)
    _publish(tmp, final)


def _pack_split(tokens: np.ndarray, offsets: np.ndarray, doc_indices: np.ndarray, data_cfg: DataConfig,
                tok: Tokenizer, path: str, progress: bool) -> dict:
    """Write one split's rows to ``path`` (.npy), returning its summary."""
    from tqdm.auto import tqdm
    lengths = offsets[doc_indices + 1] - offsets[doc_indices]
    seq_len = data_cfg.seq_len
    wrap = data_cfg.packing == "wrap"
    n_rows = int((lengths + 1).sum() // seq_len) if wrap else len(doc_indices)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=_row_dtype(tok), shape=(n_rows, seq_len))
    row_lengths = None if wrap else np.zeros(n_rows, dtype=np.int32)
    packer = WrapPacker(seq_len, tok.eos_id)
    written = 0
    with tqdm(total=len(doc_indices), desc=f"packing {os.path.basename(path)[:-4]}", unit=" docs",
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
    plan = _source_plan(data_cfg, progress)
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
        tmp = f"{final}.tmp{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
        meta = {"source": data_cfg.source, "tokenizer": tok.name, "tokenizer_fingerprint": tok.fingerprint,
                "seq_len": data_cfg.seq_len, "packing": data_cfg.packing, "val_fraction": data_cfg.val_fraction,
                "seed": data_cfg.seed}
        for split, chosen in (("train", ~is_val), ("validation", is_val)):
            summary = _pack_split(tokens, offsets, indices[chosen], data_cfg, tok, os.path.join(tmp, f"{split}.npy"),
                                  progress)
            if summary["rows"] == 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise UserError(
                    f"data.seq_len {data_cfg.seq_len} yields no {split} rows from {data_cfg.source} "
                    f"({summary['tokens']} tokens in {summary['documents']} {split} documents); lower data.seq_len, "
                    "use data.packing=pad, add text" + (", or raise data.val_fraction" if split == "validation"
                                                          else ", or lower data.val_fraction"))
            meta[split] = summary
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        _publish(tmp, final)
    return open_packed(final)


def open_packed(folder: str) -> tuple[PackedRows, PackedRows]:
    """The (train, validation) datasets of a packed cache folder."""
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    splits = []
    for split in ("train", "validation"):
        tokens = np.load(os.path.join(folder, f"{split}.npy"), mmap_mode="r")
        lengths_path = os.path.join(folder, f"{split}_lengths.npy")
        lengths = np.load(lengths_path) if os.path.isfile(lengths_path) else None
        info = {k: v for k, v in meta.items() if k not in ("train", "validation")}
        info.update(meta[split], split=split, folder=folder)
        splits.append(PackedRows(tokens, lengths, info))
    return tuple(splits)


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
