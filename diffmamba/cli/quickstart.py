"""The main job: build the built-in corpus and tokenizer, train a tiny masked-diffusion model and a
tiny AR model with the same layers on it, sample from both and print a side-by-side comparison
(validation bound vs AR perplexity, a sample of each, tokens/s).

    diffmamba quickstart                      # configs/tiny.yaml, ~7 minutes on 2 CPU cores
    diffmamba quickstart --steps 2000 --out runs/quickstart-long

Uses a GPU automatically when there is one. Everything lands in --out: the two runs (metrics,
checkpoints, final models), the evaluation folder (results.json, report.md, plots, samples.jsonl).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

from diffmamba.config import RunConfig, load_config
from diffmamba.core.errors import UserError
from diffmamba.core.paths import REPO_ROOT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/tiny.yaml",
                        help="run config shared by both models (default: %(default)s); a relative path is looked up in "
                        "the current folder, then in the repository root")
    parser.add_argument("--out", default="runs/quickstart", help="output folder (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=500,
                        help="optimizer steps per model (default: %(default)s: 2-3 minutes each on 2 CPU cores)")
    parser.add_argument("--sample-length", type=int, default=64, help="tokens per generated sample (default: %(default)s)")
    parser.add_argument("--sampler", default="ancestral", help="diffusion sampler for the samples (default: %(default)s)")
    parser.add_argument("--sampler-steps", type=int, default=64, help="diffusion sampler steps (default: %(default)s)")
    parser.add_argument("--judge", default="none",
                        help="judge LM for generative perplexity: none (default; entropy and distinct-n are still "
                             "reported), smollm2, a HF model path, or a diffmamba AR checkpoint")
    parser.add_argument("--fresh", action="store_true",
                        help="delete earlier runs in --out and retrain (default: reuse finished runs, resume interrupted ones)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides applied to both runs, e.g. model.d_model=192")


def resolve_config_path(path: str) -> str:
    """``path`` as given if it exists, else (when relative) under the repository root: what --help says."""
    if os.path.isfile(path):
        return path
    in_repo = os.path.join(REPO_ROOT, path)
    if not os.path.isabs(path) and os.path.isfile(in_repo):
        return in_repo
    raise UserError(f"config {path} not found (looked in the current folder and in {REPO_ROOT}); "
                    "pass --config PATH to an existing YAML file")


def _train_one(cfg, objective: str, out_dir: str, fresh: bool) -> str:
    """Train (or reuse, or resume) one model; returns its final-model folder."""

    from diffmamba.train import train  # lazy: `diffmamba quickstart --help` without torch

    final_dir = os.path.join(out_dir, "final")
    if fresh and os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    if os.path.isfile(os.path.join(final_dir, "model.safetensors")):
        print(f"[quickstart] reusing the finished {objective} run in {out_dir} (pass --fresh to retrain)", flush=True)
        return final_dir
    resume = os.path.isdir(os.path.join(out_dir, "checkpoints"))  # an interrupted earlier quickstart
    run_cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, name=objective))
    print(f"[quickstart] {'resuming' if resume else 'training'} the {objective} model "
          f"({cfg.train.max_steps} steps) -> {out_dir}", flush=True)
    result = train(run_cfg, out_dir, resume=resume)
    return result.get("final_dir", final_dir)


def _first_samples(samples_path: str) -> dict:
    """system name -> text of its first generated sample (samples.jsonl from the evaluation)."""

    first: dict = {}
    if os.path.isfile(samples_path):
        with open(samples_path) as f:
            for line in f:
                rec = json.loads(line)
                first.setdefault(rec["system"], rec.get("text", ""))
    return first


def _side_by_side(results: dict, samples: dict, minutes: float) -> str:
    """Plain-text comparison; every number comes from the evaluation's results.json."""
    lik = {r["system"]: r for r in results.get("likelihood", [])}

    def first(section, system):
        return next((r for r in results.get(section, []) if r.get("system") == system), {})

    nan = float("nan")
    lines = ["", "=" * 78, "diffusion vs AR on the same Mamba-3 layers (tiny model, built-in corpus)", "=" * 78]
    for system in (s["name"] for s in results.get("systems", [])):
        lk, gen, spd = lik.get(system, {}), first("generation", system), first("speed", system)
        label = "validation PPL bound (<=)" if lk.get("kind") == "bound" else "validation PPL (exact)"
        lines += [f"{system}:",
                  f"  {label:<27} {lk.get('ppl', nan):.2f}",
                  f"  {'tokens/s, batch 1':<27} {spd.get('tokens_per_s', nan):.1f}  "
                  f"(NFE {spd.get('nfe', nan):.0f}, {spd.get('latency_s', nan):.2f} s per sequence)",
                  f"  {'unigram entropy':<27} {gen.get('entropy', nan):.2f}",
                  "  sample: " + " ".join(samples.get(system, "").split())[:240]]
    lines.append(f"wall time {minutes:.1f} min (device and versions: see the report)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:

    from diffmamba.eval.compare import EvalOptions, run_evaluations  # lazy: `diffmamba quickstart --help` without torch
    from diffmamba.train import TrainingStopped  # lazy: `diffmamba quickstart --help` without torch

    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    args.config = resolve_config_path(args.config)
    start = time.perf_counter()
    cfg = load_config(RunConfig, args.config, list(args.overrides))
    train_cfg = dataclasses.replace(cfg.train, max_steps=args.steps, save_every=args.steps,
                                    eval_every=max(args.steps // 2, 1), warmup_steps=min(cfg.train.warmup_steps, args.steps // 10))
    cfg = dataclasses.replace(cfg, train=train_cfg)
    try:
        diffusion_dir = _train_one(cfg, "diffusion", os.path.join(args.out, "diffusion"), args.fresh)
        ar_dir = _train_one(cfg, "ar", os.path.join(args.out, "ar"), args.fresh)
    except TrainingStopped as stop:
        print(f"diffmamba quickstart: {stop}; run the same command again to continue", file=sys.stderr)
        return 128 + stop.signal_number

    opts = EvalOptions(out=os.path.join(args.out, "eval"), diffusion=(diffusion_dir,), ar=ar_dir,
                       judge=None if args.judge == "none" else args.judge, max_rows=32, repeats=3,
                       tasks=("unconditional",), num_samples=4, length=args.sample_length,
                       samplers=(args.sampler,), steps=(args.sampler_steps,), batch_sizes=(1,),
                       speed_repeats=2, command="diffmamba quickstart")
    results = run_evaluations(opts, parts=("likelihood", "generate", "speed"))
    samples = _first_samples(os.path.join(opts.out, "samples.jsonl"))
    print(_side_by_side(results, samples, (time.perf_counter() - start) / 60))
    print(f"models: {diffusion_dir} (diffusion), {ar_dir} (AR)")
    print(f"report: {os.path.join(opts.out, 'report.md')}")
    return 0
