"""Speed vs context of block sampling, full-sequence diffusion and AR decoding on one model; exactness
checks of the block path on the device in use (Triton scan on CUDA).

    python -m diffmamba.bench.bd3lm --contexts 64 1024 --block-size 16 --length 32
    python -m diffmamba.bench.bd3lm --checkpoint runs/tiny-block_diffusion/final --device cuda --check

Without ``--checkpoint`` a freshly initialised model of the given shape is timed (speed does not
depend on the weights). Prints one row per (mode, context): median latency of generating
``--length`` tokens at batch 1 after a random context, the prompt prefill apart, decode tokens/s
and time per token. ``--check`` first verifies, at the model's dtype on this device, that the
two-stream forward equals the block-by-block computation and that cached block sampling gives the
tokens of recomputing every block from the prefix.
"""
from __future__ import annotations

import argparse
import sys

import torch

from diffmamba.config import ModelConfig
from diffmamba.core.device import resolve_device
from diffmamba.core.errors import UserError
from diffmamba.eval.bd3lm import generation_calls
from diffmamba.eval.speed import measure
from diffmamba.model import DiffMamba
from diffmamba.sampling.base import SamplerOptions
from diffmamba.sampling.bd3lm import block_sample
from diffmamba.sampling.canvas import prompt_canvas


def _model(args):

    device = resolve_device(args.device)
    if args.checkpoint:
        model = DiffMamba.from_pretrained(args.checkpoint)
    else:
        torch.manual_seed(0)
        model = DiffMamba(ModelConfig(vocab_size=args.vocab_size, d_model=args.d_model, n_layers=args.n_layers,
                                      headdim=args.headdim, d_state=args.d_state, chunk_size=args.chunk_size,
                                      max_seq_len=max(args.contexts) + args.length))
    return model.to(device).eval(), device


@torch.no_grad()
def check(model, block_size: int, device) -> dict:
    """Max |difference| of two-stream vs block-by-block logits, and whether cached block sampling
    reproduces the uncached tokens under one seed."""

    g = torch.Generator().manual_seed(0)
    length = 4 * block_size
    clean = torch.randint(0, model.config.vocab_size, (2, length), generator=g).to(device)
    noisy = torch.where(torch.rand(2, length, generator=g).to(device) < 0.5, model.mask_token_id, clean)
    streams = model(clean, block_size=block_size, noisy=noisy)
    cache, worst = None, 0.0
    for start in range(0, length, block_size):
        span = slice(start, start + block_size)
        direct = model(noisy[:, span], fwd_states=cache)
        finite = torch.isfinite(direct)
        worst = max(worst, float((streams[:, span][finite] - direct[finite]).abs().max()))
        _, cache = model(clean[:, span], fwd_states=cache, return_fwd_states=True)
    canvas, fixed = prompt_canvas(model.mask_token_id, 2, length - block_size - 1, device, clean[:, : block_size + 1])
    options = SamplerOptions(steps=block_size, temperature=0)  # greedy: rounding cannot flip a coin
    runs = [block_sample(model, canvas, fixed, block_size, options=options, use_cache=use_cache,
                         generator=torch.Generator(device).manual_seed(0)).tokens for use_cache in (True, False)]
    scale = float(streams[torch.isfinite(streams)].abs().max())
    return {"max_abs_logit_diff": worst, "logit_scale": scale, "cached_equals_uncached": bool(torch.equal(*runs))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffmamba.bench.bd3lm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="a save_pretrained folder (default: a fresh model)")
    p.add_argument("--contexts", nargs="+", type=int, default=[64, 1024])
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--length", type=int, default=32, help="generated tokens")
    p.add_argument("--modes", nargs="+", default=["block", "diffusion", "ar"], choices=["block", "diffusion", "ar"])
    p.add_argument("--sampler", default="ancestral")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--check", action="store_true", help="verify the block path on this device first")
    for name, default in (("vocab-size", 4096), ("d-model", 128), ("n-layers", 4), ("headdim", 32), ("d-state", 32),
                          ("chunk-size", 64)):
        p.add_argument(f"--{name}", type=int, default=default, help="fresh model shape")
    args = p.parse_args(argv)
    try:
        if args.length % args.block_size:
            raise UserError(f"--length {args.length} must be a multiple of --block-size {args.block_size}")
        model, device = _model(args)
        print(f"device {device}, dtype {next(model.parameters()).dtype}, {model.num_parameters() / 1e6:.2f}M "
              f"parameters, L'={args.block_size}, {args.length} new tokens, batch 1, sampler {args.sampler}, "
              "one step per generated token", flush=True)
        if args.check:
            print(f"check: {check(model, args.block_size, device)}", flush=True)

        print(f"{'mode':<10} {'context':>8} {'latency s':>10} {'prefill s':>10} {'decode tok/s':>13} "
              f"{'ms/token':>9} {'NFE':>5}")
        for mode in args.modes:
            for context_length in args.contexts:
                context = torch.randint(0, model.config.vocab_size, (1, context_length),
                                        generator=torch.Generator().manual_seed(0)).to(device)
                generate, prefill = generation_calls(model, mode, args.block_size, context, args.length,
                                                     args.sampler, seed=0)
                timing = measure(generate, device, warmup=1, repeats=args.repeats)
                prefill_s = measure(prefill, device, warmup=1, repeats=args.repeats).median_s if prefill else 0.0
                decode = max(timing.median_s - prefill_s, 1e-9)
                print(f"{mode:<10} {context_length:>8} {timing.median_s:>10.4f} {prefill_s:>10.4f} "
                      f"{args.length / decode:>13.1f} {1e3 * decode / args.length:>9.3f} {timing.result:>5}", flush=True)
    except UserError as error:
        print(f"diffmamba.bench.bd3lm: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
