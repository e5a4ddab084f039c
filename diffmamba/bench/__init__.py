"""Benchmarks that print device, dtype, shapes, versions and medians after warm-up.

    diffmamba bench kernels [--shapes bt16k-h16 ...]     # Triton scan vs roofline and reference (GPU; reference on CPU)
    diffmamba bench reference [--lengths 256 1024]       # chunked PyTorch reference vs the per-token loop
    diffmamba bench block [--contexts 64 1024]           # block sampling vs full diffusion vs AR over context length
    diffmamba bench resources [--arch 90]                # compile the kernels for sm_90 here: registers, spills, smem
    diffmamba bench train [--lengths 1024 4096]          # training tokens/s + memory: Mamba-3 vs attention vs hybrid
    diffmamba bench speculative [--checkpoint DUAL]      # speculative rounds: call costs, break-even, tokens/s vs AR
    diffmamba bench decode [--contexts 512 8192]         # AR per-token latency: eager vs CUDA graph, over context

Sampler and decoding speed on trained checkpoints: `diffmamba eval speed`. Each subcommand's own
options: `diffmamba bench SUBCOMMAND --help`.
"""
from __future__ import annotations

import argparse
import importlib

SUBCOMMANDS = {
    "kernels": "diffmamba.bench.kernels",
    "reference": "diffmamba.bench.reference",
    "block": "diffmamba.bench.bd3lm",
    "resources": "diffmamba.bench.resources",
    "train": "diffmamba.bench.train",
    "speculative": "diffmamba.bench.speculative",
    "decode": "diffmamba.bench.decode",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("subcommand", choices=list(SUBCOMMANDS), help="which benchmark")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="that benchmark's options (see its --help)")


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(SUBCOMMANDS[args.subcommand]).main(args.options) or 0)
