"""Where text comes from: local files, folders, globs, the built-in corpus, or the Hub.

Every source becomes a Hugging Face dataset with one text column; empty documents are skipped.
Text files become one document per file when there are several, and one per blank-line-separated
paragraph when there is a single file (``data.text_unit`` overrides).
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
from typing import Iterator, Optional

import datasets
from datasets.utils import logging as hf_logging

from diffmamba.config import DataConfig
from diffmamba.core.errors import UserError
from diffmamba.data import corpus as corpus_lib
from diffmamba.data.textfiles import check_text_file, checkable

TEXT_EXTENSIONS = (".txt", ".text", ".md", ".rst")
BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", **{e: "text" for e in TEXT_EXTENSIONS}}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


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


def source_plan(data_cfg: DataConfig, progress: bool = True) -> dict:
    """How to load the source, plus a fingerprint of its content for the cache keys."""
    source = data_cfg.source
    if corpus_lib.is_builtin(source):
        corpus = corpus_lib.build_corpus(sources=corpus_lib.parse_builtin_source(source), progress=progress,
                                         cache_dir=data_cfg.cache_dir)
        return {"builder": "json", "files": corpus_lib.corpus_files(corpus), "kwargs": {}, "text_field": "text",
                "builtin": True,
                "name": "builtin-" + "-".join(corpus["sources"]), "fingerprint": corpus_lib.corpus_fingerprint(corpus)}
    files = local_files(source)
    if files is None:
        return {"hub": source, "subset": data_cfg.subset, "text_field": data_cfg.text_field,
                "name": re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{source}-{data_cfg.subset or ''}").strip("-"),
                "fingerprint": hashlib.sha256(f"{source}|{data_cfg.subset}".encode()).hexdigest()[:16]}
    builders = sorted({_builder_of(f) for f in files} - {None})
    if not builders:
        raise UserError(f"{source} is not a supported kind of file; use {', '.join(sorted(BUILDERS))} "
                        "(optionally .gz), or a folder of them")
    if len(builders) != 1:
        raise UserError(f"{source} mixes file kinds ({', '.join(builders)}); "
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
def hf_progress(enabled: bool):
    """Show or hide Hugging Face datasets' own progress bars for the duration of a block."""
    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def _unit_of(plan: dict, path: str) -> str:
    """How textfiles.check_text_file reads ``path``: the unit one document is made of."""
    if plan["builder"] == "text":
        return plan["kwargs"].get("sample_by", "paragraph")
    return "line" if _strip_compression(path).lower().endswith(".jsonl") else "document"


def check_local_files(plan: dict) -> None:
    """Refuse undecodable, binary, empty or oversized local files, naming the file (before loading)."""
    files = plan.get("files", [])
    checked = [path for path in files if checkable(path)]
    with_text = [check_text_file(path, _unit_of(plan, path), require_text=len(files) == 1) for path in checked]
    if checked and len(checked) == len(files) and not any(with_text):
        raise UserError(f"all {len(files)} data files are empty (e.g. {files[0]}); add text to them or point "
                        "data.source elsewhere")


def load_source(plan: dict, streaming: bool):
    """The raw HF dataset (all columns) of a plan."""
    datasets.logging.set_verbosity_error()
    if "hub" not in plan and not plan.get("builtin"):
        check_local_files(plan)
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
                "or 'builtin'") if "hub" in plan else "check that the files are valid " + (
            "JSON lines with a text field" if plan["builder"] == "json" else f"{plan['builder']} files")
        raise UserError(f"could not load data from {where}: {detail}; {hint}") from None


def text_column(dataset, plan: dict) -> str:
    field = plan["text_field"]
    columns = dataset.column_names
    if columns is None:  # a streaming dataset whose features are unknown until read
        columns = list(next(iter(dataset)).keys())
    if field not in columns:
        raise UserError(f"column {field!r} not found in {plan.get('hub') or plan['name']}; its columns are "
                        f"{', '.join(columns)}: set data.text_field to the one holding the text")
    return field


def non_empty(texts) -> list[bool]:
    return [bool(t and t.strip()) for t in texts]


def iter_texts(data_cfg: DataConfig, progress: bool = True) -> Iterator[str]:
    """Every non-empty document text of ``data_cfg.source``, in order, streamed (for tokenizer training)."""
    plan = source_plan(data_cfg, progress)
    raw = load_source(plan, streaming=True)
    field = text_column(raw, plan)
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
