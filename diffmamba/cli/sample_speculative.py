"""``diffmamba sample --mode speculative``: lossless self-speculative decoding from a dual checkpoint
(hooks used by diffmamba/cli/sample.py, which decodes through ``sampling.generate``; the algorithm is
diffmamba/sampling/speculative.py).

    diffmamba sample --checkpoint runs/demo-dual --mode speculative --prompt "The" --length 128 --stats
    diffmamba sample --checkpoint runs/demo-dual --mode speculative --draft-len 7 --draft-steps 2

- Only checkpoints trained with ``--objective dual`` can draft: their denoiser learned to fill a
  block that follows the AR state of its prefix. Any other checkpoint is refused with a one-line
  error (its drafts would come from an untrained conditioning, so almost none would be accepted).
- ``--draft-len`` defaults to the checkpoint's ``objective.block_size - 1``: the draft block (the
  last committed token plus k masks) is then exactly one training block.
- The samples have AR decoding's distribution (same temperature / top-k / top-p); ``--stats`` adds
  the mean tokens per round and the draft acceptance rate.
"""
from __future__ import annotations

import argparse

from diffmamba.config import check_draft_len
from diffmamba.core.errors import UserError


def add_speculative_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--draft-len", type=int, default=None, metavar="K",
                        help="--mode speculative: draft tokens per round (default: the dual checkpoint's "
                             "objective.block_size - 1)")
    parser.add_argument("--draft-steps", type=int, default=1, metavar="S",
                        help="--mode speculative: denoiser calls per draft, filling the draft left to right "
                             "in S groups (1 = all k tokens from one call)")


def check_speculative_arguments(args: argparse.Namespace) -> None:
    """Before loading anything: the flags belong to --mode speculative and are in range."""
    given = args.draft_len is not None or args.draft_steps != 1
    if args.mode != "speculative":
        if given:
            raise UserError(f"--draft-len / --draft-steps apply to --mode speculative; drop them or pass "
                            f"--mode speculative (got --mode {args.mode})")
        return
    if args.draft_len is not None:
        check_draft_len(args.draft_len)
    if args.draft_steps < 1 or (args.draft_len is not None and args.draft_steps > args.draft_len):
        raise UserError(f"--draft-steps must be in [1, --draft-len], got {args.draft_steps}")


def configure_speculative_mode(args: argparse.Namespace, checkpoint) -> None:
    """Refuse checkpoints that cannot draft; resolve ``args.draft_len`` from the training block size."""
    objective = checkpoint.run_config.objective if checkpoint.run_config is not None else None
    if objective is None or objective.name != "dual":
        trained = "has no run config, so how it was trained is unknown" if objective is None else \
            f"was trained with objective {objective.name!r}"
        raise UserError(f"--mode speculative needs a checkpoint trained with --objective dual (its block denoiser "
                        f"drafts from the AR state); {checkpoint.path} {trained}. Train one with `diffmamba train "
                        f"--objective dual objective.block_size=8`, or use --mode ar")
    if args.draft_len is None:
        args.draft_len = max(objective.block_size - 1, 1)
    if args.draft_steps > args.draft_len:
        raise UserError(f"--draft-steps must be in [1, --draft-len = {args.draft_len}], got {args.draft_steps}")

