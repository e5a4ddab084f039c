"""``diffmamba sample --mode block``: its options and checks (hooks used by diffmamba/cli/sample.py).

    diffmamba sample --checkpoint runs/tiny-block --mode block --prompt "The cat" --length 256
    diffmamba sample --checkpoint runs/tiny-block --mode block --block-size 16 --sampler first-hitting

- ``--block-size`` defaults to the checkpoint's training block size (``objective.block_size`` of
  its run config); ``--steps`` are per block and default to one per block token.
- A checkpoint trained with another objective (or another block size) still runs, with a note
  saying why its samples will be poor and how to get a block-diffusion checkpoint.
- Any ``--sampler`` runs inside each block; fixed tokens of the canvas are conditioned on only
  once their block is reached (left context, and fixed tokens inside the current block).
"""
from __future__ import annotations

import argparse
import sys

from diffmamba.core.errors import UserError


def add_block_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--block-size", type=int, default=None, metavar="N",
                        help="--mode block: tokens per block L' (default: the checkpoint's objective.block_size); "
                             "1 = AR-like, the whole length = plain diffusion")


def check_block_arguments(args: argparse.Namespace) -> None:
    """Before loading anything: --block-size only with --mode block, and >= 1."""
    if args.block_size is None:
        return
    if args.mode != "block":
        raise UserError(f"--block-size applies to --mode block; drop it or pass --mode block (got --mode {args.mode})")
    if args.block_size < 1:
        raise UserError(f"--block-size must be >= 1, got {args.block_size}; e.g. --block-size 16")


def training_note(run_config, block_size: int):
    """A one-line explanation when the checkpoint was not trained for block sampling at this size
    (None when it was)."""
    if run_config is None:
        return ("the checkpoint has no run config next to it, so whether it was trained with objective "
                "block_diffusion is unknown; samples are only meaningful if it was")
    objective = run_config.objective
    if objective.name not in ("block_diffusion", "dual"):
        return (f"the checkpoint was trained with objective {objective.name!r}, not block_diffusion: it never "
                f"learned to denoise a block from a clean prefix's scan states, so expect poor text. Train one with "
                f"`diffmamba train --objective block_diffusion objective.block_size={block_size}`, or sample with "
                f"--mode {objective.name}")
    if objective.block_size != block_size:
        return (f"the checkpoint was trained with block size {objective.block_size}; --block-size {block_size} "
                f"is outside its training (omit --block-size to use {objective.block_size})")
    return None


def configure_block_mode(args: argparse.Namespace, checkpoint) -> None:
    """Resolve ``args.block_size`` (and ``args.steps``, per block) from the loaded checkpoint and
    print a note when it was not trained for this block size."""
    run_config = checkpoint.run_config
    trained = run_config.objective.block_size if (
        run_config is not None and run_config.objective.name in ("block_diffusion", "dual")) else None
    # A dual checkpoint's denoiser reads the AR state of the prefix (diffmamba/objectives/dual.py).
    args.ar_prefix = run_config is not None and run_config.objective.name == "dual"
    if args.block_size is None:
        if trained is None:
            raise UserError(f"--mode block needs --block-size N: {checkpoint.path} was not trained with objective "
                            "block_diffusion, so it has no block size of its own (e.g. --block-size 16; better, "
                            "train with --objective block_diffusion objective.block_size=16)")
        args.block_size = trained
    note = training_note(run_config, args.block_size)
    if note:
        print(f"diffmamba sample: note: {note}", file=sys.stderr)
    if args.steps is None:
        args.steps = args.block_size
