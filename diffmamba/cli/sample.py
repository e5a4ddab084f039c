"""Generate text from a checkpoint: diffusion samplers (iterative refinement) or AR decoding.

examples:
  diffmamba sample --checkpoint runs/tiny --prompt "The cat" --length 64 --steps 64
  diffmamba sample --checkpoint runs/tiny --sampler confidence --block-length 16 --steps 64 --top-p 0.9
  diffmamba sample --checkpoint runs/tiny --mode ar --prompt "The cat" --length 64 --stats
  diffmamba sample --checkpoint runs/tiny --prompt "The cat [MASK:5] on the mat."
  diffmamba sample --checkpoint runs/tiny --prompt "The cat" --span 5 --infill " on the mat."
  diffmamba sample --checkpoint runs/tiny-block_diffusion --mode block --block-size 16 --length 256

infilling: in --prompt, [MASK:n] is a span of n tokens to generate and [MASK] one token; the text
around the markers stays fixed. Whitespace right before a generated span is dropped (BPE tokens
carry their own leading space). With markers, the canvas is exactly the pattern unless --length
makes it longer (the rest is generated after it). --prompt P --span N --infill S is the same as
--prompt "P[MASK:N]S". AR mode can only continue a prefix.

samplers (--mode diffusion): ancestral (MDLM, skips the network when nothing changed),
ancestral-nocache, first-hitting (one token per step; --steps unused), confidence (LLaDA top-k,
--block-length for semi-AR blocks), remdm-cap (remasking, --eta), parallel (Fast-dLLM: per step
every position whose confidence exceeds --threshold, at least one; --steps unused, --block-length
as confidence). Temperature, --top-k and --top-p act on the clean-token distribution; draws are
float64 Gumbel-max.

block diffusion (--mode block): blocks of --block-size tokens (default: the checkpoint's training
block size), left to right, each denoised by --sampler with --steps per block, conditioned on the
prefix through an exact constant-size per-layer scan-state cache (diffmamba/cli/sample_bd3lm.py).

speculative (--mode speculative, dual checkpoints): the block denoiser drafts --draft-len tokens,
AR mode verifies them; the samples have AR decoding's distribution (diffmamba/cli/sample_speculative.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass

import torch

from diffmamba.cli.sample_bd3lm import add_block_arguments, check_block_arguments, configure_block_mode
from diffmamba.cli.sample_budget import check_sampling_memory
from diffmamba.cli.sample_speculative import (
    add_speculative_arguments, check_speculative_arguments, configure_speculative_mode,
)
from diffmamba.core.device import autocast, resolve_device, resolve_dtype, synchronize
from diffmamba.core.errors import UserError
from diffmamba.core.io import atomic_open
from diffmamba.core.outputs import check_out_file
from diffmamba.eval.loading import load_checkpoint
from diffmamba.sampling.base import SampleResult, SamplerOptions
from diffmamba.sampling.canvas import Canvas, build_canvas
from diffmamba.sampling.generate import MODES, generate
from diffmamba.sampling.graphs import check_graph_device, resolve_cuda_graph
from diffmamba.sampling.registry import SAMPLERS, UNSTEPPED, get_sampler
from diffmamba.sampling.speculative import SpeculativeResult, format_acceptance_by_position

DEFAULT_LENGTH = 128


@dataclass
class SampleJob:
    """Everything a mode needs to fill one batch: the model, the canvas and the knobs."""

    model: torch.nn.Module
    tokenizer: object
    canvas: Canvas
    args: argparse.Namespace
    options: SamplerOptions
    device: torch.device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="a run folder from `diffmamba train` (uses final/) or a save_pretrained folder "
                             "with tokenizer.json")
    parser.add_argument("--mode", default="diffusion", choices=list(MODES),
                        help="diffusion: iterative refinement with --sampler; ar: prefill + recurrent steps; "
                             "block: block diffusion, --sampler inside each block; speculative: the block "
                             "denoiser drafts, AR mode verifies (dual checkpoints; AR's exact distribution)")
    add_block_arguments(parser)
    add_speculative_arguments(parser)
    parser.add_argument("--sampler", default=None, metavar="NAME",
                        help=f"diffusion sampler: {', '.join(SAMPLERS)} (default ancestral)")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="refinement steps (default: one per generated token)")
    parser.add_argument("--length", type=int, default=None, metavar="N",
                        help=f"total tokens per sample, prompt included (default {DEFAULT_LENGTH}, or the "
                             "[MASK:n] pattern's own length)")
    parser.add_argument("--prompt", default="", metavar="TEXT",
                        help="fixed text: a prefix, or a pattern with [MASK:n] spans")
    parser.add_argument("--infill", default=None, metavar="SUFFIX",
                        help="fixed text after a generated span of --span tokens (that follows --prompt)")
    parser.add_argument("--span", type=int, default=None, metavar="N", help="tokens to generate before --infill")
    parser.add_argument("--num-samples", type=int, default=1, metavar="N")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N", help="samples per batch (default: all)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="same seed, same samples")
    parser.add_argument("--temperature", type=float, default=1.0, metavar="T", help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, metavar="K", help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus mass in (0, 1]; 1 = off")
    parser.add_argument("--block-length", type=int, default=0, metavar="N",
                        help="confidence sampler: semi-AR block length (0 = one block)")
    parser.add_argument("--eta", type=float, default=0.008, metavar="E", help="remdm-cap: remasking cap")
    parser.add_argument("--threshold", type=float, default=0.9, metavar="C",
                        help="parallel sampler: per step, commit every masked position whose confidence exceeds C "
                             "(and always the most confident one); in (0, 1], 1 = one token per step")
    parser.add_argument("--stop-at-eos", action="store_true",
                        help="cut each sample's text at its first generated EOS (ar, block, speculative: also stop decoding there)")
    parser.add_argument("--stats", action="store_true", help="print NFE, tokens/s and wall time")
    parser.add_argument("--output", default=None, metavar="FILE.jsonl",
                        help="also write one JSON line per sample (text, ids, NFE, settings); checked before "
                             "sampling, an existing file only with --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="let --output replace an existing file")
    parser.add_argument("--max-memory-gb", type=float, default=None, metavar="GB",
                        help="refuse requests estimated to need more memory than this (default: "
                             "$DIFFMAMBA_MAX_MEMORY_GB, else half the RAM, on CUDA 90%% of the GPU's memory)")
    parser.add_argument("--device", default="auto", metavar="DEV", help="auto (cuda if available) | cpu | cuda[:i]")
    parser.add_argument("--dtype", default="auto", metavar="DTYPE",
                        help="matmul precision: auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                        help="replay the network calls (AR step, denoiser, speculative draft and score) from CUDA "
                             "graphs captured once (same tokens, 8-13x faster AR steps at small batch). Default: on "
                             "for CUDA where the trunk allows it (every mode but diffusion needs a Mamba-3 trunk), "
                             "off otherwise; --cuda-graph insists (an error where impossible), --no-cuda-graph "
                             "decodes eagerly")


# ------------------------------------------------------------------------------- validation

def _check_args(args: argparse.Namespace) -> None:
    """Reject bad values before the (slow) checkpoint load."""
    check_block_arguments(args)
    check_speculative_arguments(args)
    if args.mode in ("diffusion", "block"):
        get_sampler(args.sampler or "ancestral")
    elif args.sampler is not None:
        raise UserError(f"--sampler applies to --mode diffusion or block; --mode {args.mode} has no sampler, drop it")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.length is not None and args.length < 1:
        raise UserError(f"--length must be >= 1, got {args.length}")
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}; e.g. --top-p 0.9 (1 = off)")
    _options(args, steps=1)  # temperature, top-k, block length, eta


def _options(args: argparse.Namespace, steps: int) -> SamplerOptions:
    return SamplerOptions(steps=steps, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          block_length=args.block_length, eta=args.eta, threshold=args.threshold,
                          progress=not args.no_progress, cuda_graph=bool(args.cuda_graph))


# ------------------------------------------------------------------------------------ modes

def _sample(job: SampleJob, batch_size: int, generator: torch.Generator) -> SampleResult:
    """One batch of ``--mode``: tokens [batch, canvas length]."""
    args = job.args
    canvas, fixed = job.canvas.batch(batch_size, job.device)
    eos = job.tokenizer.eos_id
    return generate(job.model, args.mode, canvas, fixed, job.options, generator, sampler=args.sampler or "ancestral",
                    block_size=args.block_size, start_id=eos, stop_id=eos if args.stop_at_eos else None,
                    ar_prefix=getattr(args, "ar_prefix", False), draft_len=args.draft_len,
                    draft_steps=args.draft_steps)


# -------------------------------------------------------------------------------------- run

def _text_of(tokenizer, ids: list[int], stop_at_eos: bool, prefix_length: int) -> str:
    if stop_at_eos and tokenizer.eos_id in ids[prefix_length:]:
        ids = ids[:prefix_length + ids[prefix_length:].index(tokenizer.eos_id)]
    return tokenizer.decode(ids)


def _settings(args: argparse.Namespace, canvas: Canvas, steps: int) -> dict:
    return {"checkpoint": args.checkpoint, "mode": args.mode,
            "sampler": (args.sampler or "ancestral") if args.mode in ("diffusion", "block") else None,
            "steps": steps if args.mode in ("diffusion", "block") and args.sampler not in UNSTEPPED else None,
            "block_size": args.block_size, "draft_len": args.draft_len, "draft_steps":
                args.draft_steps if args.mode == "speculative" else None,
            "length": canvas.length,
            "generated_tokens": canvas.num_generated, "prompt": args.prompt, "infill": args.infill,
            "span": args.span, "seed": args.seed, "temperature": args.temperature, "top_k": args.top_k,
            "top_p": args.top_p, "block_length": args.block_length, "eta": args.eta,
            "threshold": args.threshold if args.sampler == "parallel" else None, "cuda_graph": bool(args.cuda_graph)}


def run(args: argparse.Namespace) -> int:
    _check_args(args)

    if args.output:
        check_out_file(args.output, "--output", args.overwrite)
    device = resolve_device(args.device)
    if args.cuda_graph:
        check_graph_device(device)
    dtype = resolve_dtype(args.dtype, device)
    check_sampling_memory(args, DEFAULT_LENGTH, str(device))  # before anything large is allocated
    checkpoint = load_checkpoint(args.checkpoint, str(device))
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    canvas = build_canvas(tokenizer, args.prompt, args.length, model.mask_token_id, infill=args.infill,
                          span=args.span, default_length=DEFAULT_LENGTH)
    if canvas.length > model.config.max_seq_len:
        print(f"diffmamba sample: note: --length {canvas.length} is above the model's max_seq_len "
              f"{model.config.max_seq_len}; quality past the trained length is untested", file=sys.stderr)
    if args.mode == "block":
        configure_block_mode(args, checkpoint)  # --block-size / per-block --steps from the checkpoint
    if args.mode == "speculative":
        configure_speculative_mode(args, checkpoint)  # dual checkpoints only; --draft-len from the block size
    steps = args.steps or max(canvas.num_generated, 1)
    args.cuda_graph = resolve_cuda_graph(args.cuda_graph, device, model, args.mode)
    options = _options(args, steps)
    job = SampleJob(model, tokenizer, canvas, args, options, device)
    batch_size = min(args.batch_size or args.num_samples, args.num_samples)
    num_batches = -(-args.num_samples // batch_size)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    settings = _settings(args, canvas, steps)
    records, nfes, wall = [], [], 0.0
    acceptance = SpeculativeResult(None, 0, 0)  # speculative: totals over batches
    for b in range(num_batches):
        n = min(batch_size, args.num_samples - b * batch_size)
        job.options = dataclasses.replace(options, progress_desc=f"batch {b + 1}/{num_batches}")
        synchronize(device)
        start = time.perf_counter()
        with autocast(device, dtype):
            result = _sample(job, n, generator)
        synchronize(device)
        wall += time.perf_counter() - start
        nfes.append(result.nfe)
        if isinstance(result, SpeculativeResult):
            acceptance.absorb(result)
        for row in result.tokens.cpu().tolist():
            index = len(records)
            text = _text_of(tokenizer, row, args.stop_at_eos, canvas.prefix_length)
            print(f"=== sample {index + 1}/{args.num_samples} ===\n{text}", flush=True)
            records.append({"sample": index, "text": text, "tokens": row, "batch": b, "nfe": result.nfe,
                            "steps": result.steps, **settings})
    generated = canvas.num_generated * args.num_samples
    stats = {"nfe_per_batch": nfes, "nfe_total": sum(nfes), "wall_s": round(wall, 4),
             "tokens_per_s": round(generated / wall, 2) if wall > 0 else None, "generated_tokens": generated,
             "device": str(device), "dtype": str(dtype).replace("torch.", ""), "batch_size": batch_size}
    if args.stats:
        print(f"stats: mode={args.mode} sampler={settings['sampler']} steps={settings['steps']} "
              f"samples={args.num_samples} batch={batch_size} generated_tokens={generated} "
              f"nfe={sum(nfes)} (per batch {nfes}) wall={wall:.3f}s tokens/s={stats['tokens_per_s']} "
              f"device={stats['device']} dtype={stats['dtype']}")
        if args.mode == "speculative":
            print(f"stats: draft_len={args.draft_len} draft_steps={args.draft_steps} tokens_per_round="
                  f"{acceptance.tokens_per_round:.2f} acceptance={acceptance.acceptance_rate:.3f} by draft position="
                  f"{format_acceptance_by_position(acceptance.acceptance_by_position)} (each given the ones before "
                  "it kept)")
    if args.output:
        _write_jsonl(args.output, records, stats)
    return 0


def _write_jsonl(path: str, records: list[dict], stats: dict) -> None:
    try:
        with atomic_open(path, "w") as f:
            for record in records:
                f.write(json.dumps({**record, "run_stats": stats}) + "\n")
    except OSError as e:
        raise UserError(f"cannot write --output {path} ({e.strerror}); pick a writable path") from None
