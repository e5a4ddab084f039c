"""The ``diffmamba`` command. Each subcommand lives in its own module exposing
``add_arguments(parser)`` and ``run(args) -> int``; it is imported only when chosen, so
``diffmamba --help`` stays instant."""
from __future__ import annotations

import argparse
import importlib
import sys

from diffmamba.core.errors import UserError

# name -> (module, one-line help)
COMMANDS = {
    "quickstart": ("diffmamba.cli.quickstart", "the main job: corpus, tokenizer, tiny diffusion + AR models, samples, comparison"),
    "data": ("diffmamba.data.cli", "build or inspect datasets (e.g. `data prepare --corpus builtin`)"),
    "tokenizer": ("diffmamba.data.tokenizer_cli", "train a byte-level BPE tokenizer on a corpus"),
    "train": ("diffmamba.cli.train", "train a model in one process (accelerate launch scripts/train.py for many)"),
    "sample": ("diffmamba.cli.sample", "generate text: diffusion samplers, AR decoding, block diffusion, infilling"),
    "eval": ("diffmamba.eval.cli", "likelihood, generation quality, infilling, speed; diffusion vs AR report"),
    "bench": ("diffmamba.bench", "benchmark the scan kernels, the reference, block sampling and training per trunk (device + versions)"),
    "smoke": ("diffmamba.cli.smoke", "forward/backward smoke test of a freshly initialised tiny model"),
}


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffmamba",
        description="Masked discrete-diffusion LMs on a bidirectional Mamba-3 trunk, with an AR mode on the same layers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<11} {h}" for n, (_, h) in COMMANDS.items())
        + "\n\nRun `diffmamba COMMAND --help` for a command's options.",
    )
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] not in COMMANDS:
        top.error(f"unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}")
    name = argv[0]
    module_name, help_line = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"diffmamba {name}", description=module.__doc__ or help_line,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    # KEY=VALUE overrides may sit between options; intermixed parsing allows that. It cannot handle
    # sub-commands or pass-through (REMAINDER) arguments, and `train` installs its own parse_args.
    plain = "parse_args" in vars(parser) or any(
        a.nargs in (argparse.REMAINDER, argparse.PARSER) for a in parser._actions)
    args = (parser.parse_args if plain else parser.parse_intermixed_args)(argv[1:])
    try:
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"diffmamba {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffmamba {name}: interrupted", file=sys.stderr)
        return 130
