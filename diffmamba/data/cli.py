"""Build or inspect the data a run trains on.

    diffmamba data prepare --corpus builtin                     # build the built-in corpus (JSONL) once
    diffmamba data prepare --corpus builtin --sources bbc,kjv --out corpus/
    diffmamba data prepare --corpus builtin --tokenizer gpt2 --seq-len 1024   # + tokenise and pack
    diffmamba data prepare --corpus ~/text/ --tokenizer runs/x/final --seq-len 256
    diffmamba data prepare --config configs/tiny.yaml           # exactly the data of a training run
    diffmamba data info                                         # what is installed and cached

Tokenising and packing once before ``accelerate launch`` keeps the ranks from doing it together.
Everything is cached under --cache-dir (default $DIFFMAMBA_CACHE or ~/.cache/diffmamba); running
the same command again reuses it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

from diffmamba.config import DataConfig, RunConfig, load_config
from diffmamba.core.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    prepare = commands.add_parser(
        "prepare", help="build the built-in corpus and/or tokenise and pack a corpus",
        description="Build the built-in corpus (--corpus builtin) and, when --tokenizer, --seq-len or --config is "
                    "given or the corpus is a path, tokenise and pack it into train/validation rows.")
    prepare.add_argument("--corpus", metavar="SOURCE", help="'builtin' (or 'builtin:bbc,kjv'), a text/JSON(L)/parquet "
                         "file, folder or glob, or a Hub dataset name (default: builtin, or the config's data.source)")
    prepare.add_argument("--sources", metavar="LIST", help="built-in sources to use, comma-separated "
                         "(bbc,kjv,gcide,linuxdoc,pydoc,wordnet; default: bbc, kjv and every installed Debian one)")
    prepare.add_argument("--out", metavar="DIR", help="folder for the built-in corpus JSONL files only "
                         "(default: CACHE/corpus/builtin)")
    prepare.add_argument("--max-documents", type=int, default=0, metavar="N",
                         help="cap on documents per built-in source, or on the corpus's documents (quick looks)")
    prepare.add_argument("--force", action="store_true", help="rebuild the built-in corpus even if it is cached")
    prepare.add_argument("--tokenizer", metavar="SPEC", help="'builtin' (BPE trained on the built-in corpus), 'gpt2', "
                         "a tokenizer.json or a folder holding one")
    prepare.add_argument("--seq-len", type=int, metavar="N", help="row length in tokens")
    prepare.add_argument("--packing", choices=("wrap", "pad"), help="wrap: documents + EOS cut into rows (default); "
                         "pad: one document per row")
    prepare.add_argument("--text-field", metavar="NAME", help="JSON/parquet column holding the text (default: text)")
    prepare.add_argument("--config", metavar="FILE", help="take the data settings from a run config YAML")
    prepare.add_argument("--cache-dir", metavar="DIR", help="cache folder (default $DIFFMAMBA_CACHE or "
                         "~/.cache/diffmamba)")
    prepare.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                         help="data config overrides such as data.val_fraction=0.05 data.num_proc=4")
    info = commands.add_parser("info", help="installed corpus sources and everything cached",
                               description="List the built-in corpus sources (installed or how to install), and the "
                                           "cached corpus, tokenizers, tokenised sources and packed datasets.")
    info.add_argument("--cache-dir", metavar="DIR", help="cache folder (default $DIFFMAMBA_CACHE or ~/.cache/diffmamba)")


def run(args: argparse.Namespace) -> int:
    return _prepare(args) if args.action == "prepare" else _info(args)


# ---------------------------------------------------------------------- prepare

def _data_config(args):
    """The DataConfig that prepare works on: --config (+ overrides), then the explicit flags."""
    overrides = [o if o.startswith("data.") else f"data.{o}" for o in args.overrides]
    cfg = load_config(RunConfig, args.config, overrides).data if args.config or overrides else DataConfig()
    changes = {"source": args.corpus, "tokenizer": args.tokenizer, "seq_len": args.seq_len, "packing": args.packing,
               "text_field": args.text_field, "cache_dir": args.cache_dir}
    if args.max_documents and not _is_builtin(args.corpus or cfg.source):
        changes["max_documents"] = args.max_documents
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})


def _is_builtin(source: str) -> bool:
    from diffmamba.data.corpus import is_builtin  # lazy: `diffmamba data --help` without torch and HF datasets
    return is_builtin(source)


def print_corpus_summary(corpus: dict, seconds: float) -> None:
    from diffmamba.data.corpus import SOURCES  # lazy: `diffmamba data --help` without torch and HF datasets
    entries = corpus["entries"]
    print(f"built-in corpus in {corpus['dir']} ({seconds:.1f} s; rebuilt: {', '.join(corpus['built']) or 'none'})")
    print(f"  {'source':<10}{'documents':>11}{'MB':>9}  description")
    for name, entry in entries.items():
        print(f"  {name:<10}{entry['documents']:>11,}{entry['bytes'] / 1e6:>9.2f}  {SOURCES[name].description}")
    print(f"  {'total':<10}{sum(e['documents'] for e in entries.values()):>11,}"
          f"{sum(e['bytes'] for e in entries.values()) / 1e6:>9.2f}")
    unused = [s for s in SOURCES.values() if s.name not in entries and s.locate() is None]
    if unused:
        print("  not installed: " + "; ".join(f"{s.name} (`{s.install}`)" for s in unused))


def _prepare(args) -> int:
    from diffmamba.data.corpus import build_corpus, parse_builtin_source  # lazy: `diffmamba data --help` without torch and HF datasets
    cfg = _data_config(args)
    wants_rows = bool(args.tokenizer or args.seq_len or args.config or args.overrides or args.packing
                      or not _is_builtin(cfg.source))
    if _is_builtin(cfg.source):
        sources = args.sources.split(",") if args.sources else parse_builtin_source(cfg.source)
        if args.sources:
            cfg = dataclasses.replace(cfg, source="builtin:" + args.sources)
        start = time.perf_counter()
        corpus = build_corpus(args.out, sources, max_documents=args.max_documents, force=args.force,
                              cache_dir=cfg.cache_dir)
        print_corpus_summary(corpus, time.perf_counter() - start)
        if args.out and wants_rows:
            print("note: --out only places the corpus files; packed rows use the corpus in the cache folder")
    elif args.sources or args.out:
        raise UserError("--sources and --out apply to --corpus builtin only; drop them for a path or Hub dataset")
    if wants_rows:
        _prepare_rows(cfg)
    return 0


def _prepare_rows(cfg) -> None:
    from diffmamba.data.datasets import build_datasets, resolve_tokenizer  # lazy: `diffmamba data --help` without torch and HF datasets
    from diffmamba.data.sources import local_files  # lazy: `diffmamba data --help` without torch and HF datasets
    if not _is_builtin(cfg.source):
        local_files(cfg.source)  # a wrong path fails now, not after training a tokenizer
    start = time.perf_counter()
    tok = resolve_tokenizer(cfg)
    print(f"tokenizer {tok.name}: vocab {tok.vocab_size:,} + mask (id {tok.mask_id}), eos id {tok.eos_id} "
          f"({time.perf_counter() - start:.1f} s)")
    start = time.perf_counter()
    train, validation = build_datasets(cfg, tok)
    print(f"rows of {cfg.seq_len} tokens ({cfg.packing}) in {train.info['folder']} ({time.perf_counter() - start:.1f} s)")
    for split in (train, validation):
        print(f"  {split.info['split']:<11}{len(split):>10,} rows {split.info['documents']:>9,} documents "
              f"{split.num_tokens:>13,} tokens")


# ---------------------------------------------------------------------- info

def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _folders(path: str) -> list[str]:
    if not os.path.isdir(path):
        return []
    return sorted(os.path.join(path, d) for d in os.listdir(path) if ".tmp" not in d
                  and os.path.isdir(os.path.join(path, d)))


def _size_mb(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(folder) for f in files) / 1e6


def _info(args) -> int:
    from diffmamba.data.corpus import SOURCES, cache_root, default_corpus_dir  # lazy: `diffmamba data --help` without torch and HF datasets
    root = cache_root(args.cache_dir)
    print("built-in corpus sources:")
    for source in SOURCES.values():
        where = source.locate()
        state = f"installed ({where})" if where else f"missing: {source.install}"
        print(f"  {source.name:<10}{'required' if source.required else 'optional':<10}{state}")
    print(f"cache: {root}")
    manifest = _read_json(os.path.join(default_corpus_dir(args.cache_dir), "manifest.json"))
    if manifest:
        parts = [f"{n} {e['documents']:,} docs {e['bytes'] / 1e6:.1f} MB" for n, e in manifest["sources"].items()]
        print("  corpus/builtin: " + "; ".join(parts))
    for folder in _folders(os.path.join(root, "tokenizers")):
        print(f"  tokenizers/{os.path.basename(folder)}")
    for folder in _folders(os.path.join(root, "tokenized")):
        meta = _read_json(os.path.join(folder, "meta.json")) or {}
        print(f"  tokenized/{os.path.basename(folder)}: {meta.get('documents', '?'):,} docs, "
              f"{meta.get('tokens', '?'):,} tokens ({_size_mb(folder):.0f} MB)")
    for folder in _folders(os.path.join(root, "datasets")):
        meta = _read_json(os.path.join(folder, "meta.json")) or {}
        rows = " / ".join(f"{meta[s]['rows']:,}" for s in ("train", "validation") if s in meta)
        print(f"  datasets/{os.path.basename(folder)}: {meta.get('source')} x {os.path.basename(str(meta.get('tokenizer')))}"
              f", seq_len {meta.get('seq_len')} {meta.get('packing')}, train / validation rows {rows} "
              f"({_size_mb(folder):.0f} MB)")
    return 0
