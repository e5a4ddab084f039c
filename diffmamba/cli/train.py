"""Train a DiffMamba model (masked diffusion or AR on the same trunk), resumable exactly.

    diffmamba train --config configs/tiny.yaml --out runs/tiny                 # one process (CPU or 1 GPU)
    diffmamba train --config configs/tiny.yaml --objective ar --max-steps 200 train.lr=1e-3
    accelerate launch scripts/train.py --config configs/small.yaml --out runs/small   # all GPUs of a node
    accelerate launch --config_file configs/accelerate/multi_node.yaml scripts/train.py ...  # several nodes
    diffmamba train --out runs/tiny --resume train.max_steps=4000             # continue where it stopped
    diffmamba train --config configs/tiny.yaml --out runs/tiny-adapted train.init_from=runs/tiny-ar  # start from AR weights

Config values come from ``--config`` and dotted overrides (``train.lr=1e-3`` or ``--train.lr 1e-3``);
the resolved config is written to ``OUT/config.yaml``. Outputs: ``OUT/metrics.jsonl`` (one JSON object
per log event), ``OUT/checkpoints/step_XXXXXXX/`` (see diffmamba/train/checkpoint.py), and ``OUT/final/``:
the model to use, a ``from_pretrained`` folder with ``tokenizer.json`` holding the EMA weights (or the
raw ones with ``train.final_weights=raw`` or ``train.ema=0``).

With ``--resume`` the run continues from the newest complete checkpoint in OUT, and on CPU its loss
trajectory equals the uninterrupted run's bit for bit: the data order is a function of (seed, epoch)
and the checkpoint's position, the noise of step ``s`` comes from generators seeded by (seed, s, rank),
and the optimizer, EMA and global RNG states are restored.

``train.init_from=DIR`` starts from another run's weights (its final/, or a step folder) of the same
architecture and tokenizer, e.g. masked diffusion adapted from an AR run, as DiffuLLaMA and Dream
adapt AR LMs. Only the weights come along; ``--resume`` then continues from the new run's own
checkpoints.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from diffmamba.config import RunConfig, load_config
from diffmamba.core.errors import UserError

OBJECTIVE_NAMES = ("diffusion", "ar", "block_diffusion", "dual")


# ------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="run config YAML, e.g. configs/tiny.yaml "
                        "(with --resume it defaults to OUT/config.yaml)")
    parser.add_argument("--objective", choices=OBJECTIVE_NAMES, help="shortcut for objective.name=...")
    parser.add_argument("--max-steps", type=int, metavar="N", help="shortcut for train.max_steps=N")
    parser.add_argument("--out", metavar="DIR", help="run folder for config, metrics, checkpoints and final/ "
                        "(default: runs/<config name>-<objective>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its newest complete "
                        "checkpoint (exactly: same data order, noise and optimizer state)")
    parser.add_argument("--fresh", action="store_true", help="delete the run already in --out (checkpoints, final/, "
                        "metrics) and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    parser.add_argument("--debug-batches", action="store_true", help="also write OUT/debug/rank<R>.jsonl: the sample "
                        "indices and diffusion times of every micro-batch, and a parameter checksum at the end")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides such as train.lr=1e-3 model.d_model=64 (or --train.lr 1e-3); "
                        "they may come before, between or after the options")
    _accept_dotted_options(parser)


def split_dotted_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take ``--a.b value`` / ``--a.b=value`` out of argv as ``a.b=value`` overrides. Real flags
    never contain a dot, so the two cannot be confused (and negative values like ``-1`` work)."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        name = token[2:].split("=", 1)[0]
        if token.startswith("--") and "." in name:
            if "=" in token:
                overrides.append(token[2:])
            elif i + 1 < len(argv):
                overrides.append(f"{name}={argv[i + 1]}")
                i += 1
            else:
                raise UserError(f"{token} needs a value, e.g. {token} 1e-3 or {token}=1e-3")
        else:
            rest.append(token)
        i += 1
    return rest, overrides


def _accept_dotted_options(parser: argparse.ArgumentParser) -> None:
    # argparse cannot declare "any --section.field"; this parser instance pulls them out first.
    # Intermixed parsing lets KEY=VALUE overrides sit on both sides of options.
    parse_plain = parser.parse_intermixed_args

    def parse_args(args=None, namespace=None):
        rest, dotted = split_dotted_options(list(sys.argv[1:] if args is None else args))
        parsed = parse_plain(rest, namespace)
        parsed.overrides = list(parsed.overrides) + dotted
        return parsed

    parser.parse_args = parse_args


def resolve_run(args: argparse.Namespace) -> tuple[RunConfig, str]:
    """The RunConfig and run folder that ``args`` describe (config file < overrides < shortcuts)."""
    overrides = list(args.overrides)
    if args.objective:
        overrides.append(f"objective.name={args.objective}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    config_path = args.config
    if config_path is None:
        saved = os.path.join(args.out, "config.yaml") if args.out else None
        if not (args.resume and saved and os.path.isfile(saved)):
            raise UserError("no --config given; pass one such as --config configs/tiny.yaml "
                            "(only --resume with an existing --out can reuse OUT/config.yaml)")
        config_path = saved
    cfg = load_config(RunConfig, config_path, overrides)
    out = args.out or os.path.join("runs", f"{os.path.splitext(os.path.basename(config_path))[0]}-{cfg.objective.name}")
    return cfg, out


def run(args: argparse.Namespace) -> int:
    from diffmamba.train import TrainingStopped, train  # lazy: `diffmamba train --help` without torch

    cfg, out = resolve_run(args)
    try:
        train(cfg, out, resume=args.resume, show_progress=not args.no_progress, debug_batches=args.debug_batches,
              fresh=args.fresh)
    except TrainingStopped as stop:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"train: {stop}", file=sys.stderr)
        return 128 + stop.signal_number  # the shell's convention for "ended by that signal"
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``scripts/train.py`` (one process per accelerator under ``accelerate launch``)."""
    parser = argparse.ArgumentParser(prog="scripts/train.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except UserError as e:
        # Every process meets the same mistake; one line is enough.
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"train: error: {e}", file=sys.stderr)
        return 2
