"""``diffmamba sample``'s memory check: the canvas length is bounded from the prompt *before* it is
tokenised or built (a byte-level BPE token covers at least one byte), and the model's size is read
from its config.json, so a request past the limit is refused before the checkpoint is even loaded."""
from __future__ import annotations

import argparse
import os

import yaml

from diffmamba.core import budget
from diffmamba.core.errors import UserError
from diffmamba.core.io import read_json
from diffmamba.eval.loading import find_run_config
from diffmamba.model_folder import find_model_dir
from diffmamba.sampling.canvas import parse_pattern


def length_bound(args: argparse.Namespace, default_length: int) -> tuple[int, int]:
    """(upper bound of the canvas length, upper bound of the fixed prompt tokens)."""
    pieces = parse_pattern(args.prompt)
    if args.infill is not None:
        pieces += [max(args.span or 0, 0), args.infill]
    text = sum(len(p.encode("utf-8", "replace")) for p in pieces if isinstance(p, str))
    spans = sum(p for p in pieces if isinstance(p, int))
    length = args.length or (text + spans if spans else default_length)
    return max(length, text + spans), text


def _model_sizes(checkpoint: str) -> tuple[int, int, int | None]:
    """(vocab size, d_model, trained block size or None) from the checkpoint's config files."""
    model_dir = find_model_dir(checkpoint)
    try:
        model = read_json(os.path.join(model_dir, "config.json"))["model"]
        vocab, d_model = int(model["vocab_size"]), int(model["d_model"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{os.path.join(model_dir, 'config.json')} is not a valid model config ({str(e)[:100]}); "
                        "pass a folder written by `diffmamba train` or save_pretrained") from None
    block = None
    run_config = find_run_config(model_dir)
    if run_config:
        try:
            with open(run_config, encoding="utf-8") as f:
                block = int(yaml.safe_load(f)["objective"]["block_size"]) or None
        except Exception:  # no block size to learn from it: the estimate takes the whole length
            block = None
    return vocab, d_model, block


def check_sampling_memory(args: argparse.Namespace, default_length: int, device: str) -> None:
    length, prompt = length_bound(args, default_length)
    vocab, d_model, trained_block = _model_sizes(args.checkpoint)
    batch = min(args.batch_size or args.num_samples, args.num_samples)
    estimate = budget.sampling_bytes(args.mode, batch, length, prompt, vocab, d_model,
                                     block_size=args.block_size or trained_block)
    budget.require(estimate, f"sampling {batch} x {length} tokens (--mode {args.mode})",
                   "lower --length / the [MASK:n] spans or --batch-size", args.max_memory_gb, device)
