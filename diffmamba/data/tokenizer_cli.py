"""Train a byte-level BPE tokenizer (with <|endoftext|> and <|mask|>) on a corpus.

    diffmamba tokenizer train --corpus builtin --vocab-size 8192 --out tokenizers/bpe8k
    diffmamba tokenizer train --corpus ~/text/ --vocab-size 32768 --out tok/ --max-documents 100000
    diffmamba train ... data.tokenizer=tokenizers/bpe8k      # use it

The model predicts ``--vocab-size`` tokens (256 bytes, <|endoftext|> and the learned merges);
<|mask|> is appended as id ``vocab-size``. The summary reports the time taken and the compression
(UTF-8 bytes per token) and encoding speed, measured on the first few MB of the corpus.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

from diffmamba.config import DataConfig
from diffmamba.core.errors import UserError
from diffmamba.core.outputs import check_out_dir

SAMPLE_BYTES = 4_000_000  # text used to measure compression and speed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = commands.add_parser("train", help="train a byte-level BPE on a corpus",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--corpus", required=True, metavar="SOURCE", help="'builtin' (or 'builtin:bbc,kjv'), a "
                       "text/JSON(L)/parquet file, folder or glob, or a Hub dataset name")
    train.add_argument("--vocab-size", type=int, required=True, metavar="N",
                       help="tokens the model predicts (>= 260); the mask gets id N")
    train.add_argument("--out", required=True, metavar="DIR", help="folder to write tokenizer.json into")
    train.add_argument("--min-frequency", type=int, default=2, metavar="N", help="least count of a merged pair")
    train.add_argument("--text-field", default="text", metavar="NAME", help="JSON/parquet column holding the text")
    train.add_argument("--text-unit", default="auto", choices=("auto", "file", "paragraph", "line"),
                       help="documents of text files (see data.text_unit)")
    train.add_argument("--max-documents", type=int, default=0, metavar="N", help="train on the first N documents")
    train.add_argument("--cache-dir", metavar="DIR", help="cache folder for the built-in corpus")


def run(args: argparse.Namespace) -> int:
    from diffmamba.data.sources import iter_texts  # lazy: `diffmamba tokenizer --help` without HF datasets
    from diffmamba.data.tokenizer import train_bpe  # lazy: `diffmamba tokenizer --help` without HF datasets
    if args.vocab_size < 260:
        raise UserError(f"--vocab-size {args.vocab_size} is too small; a byte-level BPE needs >= 260")
    check_out_dir(args.out)  # before training: a run that cannot save its result is lost work
    cfg = DataConfig(source=args.corpus, text_field=args.text_field, text_unit=args.text_unit,
                     max_documents=args.max_documents, cache_dir=args.cache_dir)
    start = time.perf_counter()
    texts = iter_texts(cfg)
    n_bytes = 0

    def counted(items):
        nonlocal n_bytes
        for text in items:
            n_bytes += len(text.encode("utf-8"))
            yield text

    tok = train_bpe(counted(texts), args.vocab_size, min_frequency=args.min_frequency, name=args.out)
    seconds = time.perf_counter() - start
    path = tok.save(args.out)
    sample, size = [], 0
    for text in iter_texts(dataclasses.replace(cfg, max_documents=0), progress=False):
        sample.append(text)
        size += len(text.encode("utf-8"))
        if size >= SAMPLE_BYTES:
            break
    start = time.perf_counter()
    bytes_per_token = tok.bytes_per_token(sample)
    speed = size / 1e6 / (time.perf_counter() - start)
    print(f"trained on {n_bytes / 1e6:.1f} MB of {args.corpus} in {seconds:.1f} s -> {path}")
    short = f" (the corpus allowed only {tok.vocab_size - 257:,} merges)" if tok.vocab_size < args.vocab_size else ""
    print(f"  vocab {tok.vocab_size:,} (+ <|mask|> id {tok.mask_id}), eos id {tok.eos_id}{short}")
    print(f"  compression {bytes_per_token:.2f} bytes/token, encoding {speed:.1f} MB/s "
          f"(on the first {size / 1e6:.1f} MB)")
    return 0
