"""Why self-speculative decoding wins or loses on this device: the cost of its calls against an AR step.

    diffmamba bench speculative --checkpoint runs/demo-dual --draft-lens 3 7 --batch-sizes 1 8
    diffmamba bench speculative --device cuda                  # a fresh model: call costs only
    diffmamba bench speculative --device cuda --no-cuda-graph  # eager calls (graphed by default on CUDA)

A round of ``--mode speculative`` is one draft call (the block denoiser on k + 1 tokens from the AR
state) and one scoring call (an AR scan over the same k + 1 tokens that also returns the state after
each of them), and it emits the accepted drafts plus one token. It beats AR decoding, one step per
token, exactly when

    tokens per round  >  (draft call + scoring call) / AR step   =: break-even

Per batch size and k this prints the median time of each call (after warm-up), the break-even
tokens per round, and, with ``--checkpoint`` (a ``dual`` run), the measured tokens per round,
acceptance and tokens/s of speculative and AR decoding over ``--length`` new tokens from the
same seed, side by side from one run. A fresh model's calls cost what a trained one's do, but its
acceptance means nothing, so it is not decoded.
"""
from __future__ import annotations

import argparse

import torch

from diffmamba.config import ModelConfig, check_draft_len
from diffmamba.core.device import resolve_device
from diffmamba.core.errors import UserError
from diffmamba.eval.speed import environment, format_environment, measure
from diffmamba.model import DiffMamba
from diffmamba.sampling.ar import ar_generate
from diffmamba.sampling.bd3lm import block_denoiser
from diffmamba.sampling.graphs import (GraphedDenoiser, GraphedScore, GraphedStep, check_graph_device,
                                       resolve_cuda_graph)
from diffmamba.sampling.speculative import format_acceptance_by_position, speculative_generate


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="diffmamba bench speculative", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="a dual checkpoint (run folder or final/); default: a fresh model, call costs only")
    p.add_argument("--draft-lens", nargs="+", type=int, default=[3, 7], metavar="K", help="k (default 3 7)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8], metavar="B", help="(default 1 8)")
    p.add_argument("--length", type=int, default=64, help="new tokens per decode (default 64)")
    p.add_argument("--context", type=int, default=32, help="random prompt tokens before the timed calls (default 32)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-p", type=float, default=0.9, help="(default 0.9, as eval compare)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement; the median is printed")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="time the calls and both decoders replayed from CUDA graphs, as decoding runs them "
                        "(default: on CUDA; --no-cuda-graph: eager)")
    for name, default in (("vocab-size", 4096), ("d-model", 192), ("n-layers", 4), ("headdim", 48)):
        p.add_argument(f"--{name}", type=int, default=default, help=f"fresh model shape (default {default})")
    args = p.parse_args(argv)
    for k in args.draft_lens:
        check_draft_len(k, "--draft-lens")
    if min(args.batch_sizes) < 1 or args.length < 1 or args.context < 1 or args.repeats < 1:
        raise UserError("--batch-sizes, --length, --context and --repeats must be >= 1")
    if not 0 < args.top_p <= 1 or args.temperature < 0:
        raise UserError("--top-p must be in (0, 1] and --temperature >= 0")
    return args


def load_model(args, device: torch.device) -> DiffMamba:
    if args.checkpoint is None:
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=args.vocab_size, d_model=args.d_model, n_layers=args.n_layers,
                          headdim=args.headdim)
        return DiffMamba(cfg).to(device).eval()
    from diffmamba.eval.loading import load_checkpoint  # lazy: a fresh model needs no tokenizer or run folder
    checkpoint = load_checkpoint(args.checkpoint, str(device))
    objective = checkpoint.run_config.objective.name if checkpoint.run_config is not None else "unknown"
    if objective != "dual":
        raise UserError(f"{args.checkpoint} was trained with objective {objective!r}; only a dual checkpoint's "
                        "denoiser drafts from the AR state (train one with --objective dual), or omit "
                        "--checkpoint to time the calls of a fresh model")
    return checkpoint.model


def call_costs(model, batch: int, k: int, context: int, device, repeats: int, cuda_graph: bool = False) -> dict:
    """Median seconds of an AR step, a draft call and a scoring call (k + 1 tokens) from one prefix
    state; with ``cuda_graph`` each replayed from its capture, as decoding then runs them."""
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (batch, context), generator=gen).to(device)
    _, state = model.prefill(prompt)
    block = prompt[:, -(k + 1):].clone()
    drafted = block.clone()
    drafted[:, 1:] = model.mask_token_id
    if cuda_graph:
        graphed_step = GraphedStep(model, state)
        denoise = GraphedDenoiser(model, state, k + 1).bind(state)
        score = GraphedScore(model, state, k + 1)
        calls = (("step", lambda: graphed_step(block[:, 0])), ("draft", lambda: denoise(drafted)),
                 ("score", lambda: score(block, state)))
    else:
        denoise = block_denoiser(model, state)
        calls = (("step", lambda: model.step(block[:, 0], state)), ("draft", lambda: denoise(drafted)),
                 ("score", lambda: model.prefill(block, state, every_token=True)))
    return {name: measure(fn, device, warmup=2, repeats=repeats).median_s for name, fn in calls}


def decode_rates(model, batch: int, k: int, args, device) -> dict:
    """Tokens/s of speculative and AR decoding of ``--length`` tokens after one token, same seed."""
    prompt = torch.zeros(batch, 1, dtype=torch.long, device=device)
    knobs = dict(temperature=args.temperature, top_p=args.top_p)

    def speculative():
        return speculative_generate(model, prompt, args.length, torch.Generator(device).manual_seed(0),
                                    draft_len=k, cuda_graph=args.cuda_graph, **knobs)

    def ar():
        return ar_generate(model, prompt, args.length, torch.Generator(device).manual_seed(0),
                           cuda_graph=args.cuda_graph, **knobs)

    spec, plain = (measure(fn, device, warmup=1, repeats=args.repeats) for fn in (speculative, ar))
    result = spec.result
    return {"tokens_per_round": result.tokens_per_round, "acceptance": result.acceptance_rate,
            "acceptance_by_position": result.acceptance_by_position,
            "speculative_tok_s": batch * args.length / spec.median_s, "ar_tok_s": batch * args.length / plain.median_s}


@torch.no_grad()
def run(args) -> None:
    device = resolve_device(args.device)
    model = load_model(args, device)
    if args.cuda_graph:
        check_graph_device(device)
    args.cuda_graph = resolve_cuda_graph(args.cuda_graph, device, model, "speculative")
    dtype = next(model.parameters()).dtype
    print(format_environment(environment(device, dtype)), flush=True)
    what = args.checkpoint or "a fresh model (call costs only; acceptance needs a trained dual checkpoint)"
    print(f"{what}: {model.num_parameters() / 1e6:.2f}M parameters, {model.config.n_layers} layers; "
          f"{args.context}-token prompt state, {args.length} new tokens, temperature {args.temperature}, "
          f"top-p {args.top_p}; medians of {args.repeats}; "
          f"{'every call replayed from a CUDA graph' if args.cuda_graph else 'eager calls'}", flush=True)
    header = "| batch | k | AR step ms | draft ms | score ms | break-even tokens/round |"
    decoded = args.checkpoint is not None
    if decoded:
        header += (" tokens/round | acceptance | by draft position | speculative tok/s | AR tok/s | "
                   "speculative / AR |")
    print(header)
    print("|" + "---|" * header.count(" |"))
    for batch in args.batch_sizes:
        for k in args.draft_lens:
            costs = call_costs(model, batch, k, args.context, device, args.repeats, args.cuda_graph)
            even = (costs["draft"] + costs["score"]) / costs["step"]
            row = (f"| {batch} | {k} | {1e3 * costs['step']:.2f} | {1e3 * costs['draft']:.2f} | "
                   f"{1e3 * costs['score']:.2f} | {even:.2f} (max {k + 1}) |")
            if decoded:
                rates = decode_rates(model, batch, k, args, device)
                row += (f" {rates['tokens_per_round']:.2f} | {100 * rates['acceptance']:.0f}% | "
                        f"{format_acceptance_by_position(rates['acceptance_by_position'])} | "
                        f"{rates['speculative_tok_s']:.1f} | {rates['ar_tok_s']:.1f} | "
                        f"{rates['speculative_tok_s'] / rates['ar_tok_s']:.2f}x |")
            print(row, flush=True)


def main(argv=None) -> int:
    """``diffmamba bench speculative``; a UserError becomes the CLI's one-line error and exit 2."""
    run(parse_args(argv))
    return 0
