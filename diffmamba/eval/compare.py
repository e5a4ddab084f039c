"""Run the evaluations for a list of systems and write the report.

``run_evaluations(options, parts)`` is what every ``diffmamba eval`` subcommand and
``scripts/eval_compare.py`` call: ``parts`` picks likelihood / generate / infill / speed. Results go
to ``options.out``: ``results.json``, ``report.md``, the plots and ``samples.jsonl``. A later
subcommand run into the same folder with the same systems adds its sections to the report.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Optional

import torch

from diffmamba.errors import UserError
from diffmamba.eval.systems import System, default_systems

PARTS = ("likelihood", "generate", "infill", "speed")


@dataclass
class EvalOptions:
    out: str
    diffusion: Optional[str] = None
    ar: Optional[str] = None
    systems: list = field(default_factory=list)  # extra System objects (e.g. block diffusion)
    judge: Optional[str] = "smollm2"  # None / "none" = no gen-PPL
    data: Optional[str] = None
    seq_len: Optional[int] = None
    max_rows: int = 64
    device: Optional[str] = None
    dtype: str = "auto"
    seed: int = 0
    batch_size: int = 8
    # likelihood
    repeats: int = 3
    # generation
    tasks: tuple = ("unconditional", "prompted")
    num_samples: int = 8
    length: int = 64
    prompt_len: int = 32
    samplers: tuple = ("ancestral", "first-hitting", "confidence", "remdm-cap")
    steps: tuple = (8, 16, 32, 64)
    top_p: tuple = (0.9,)
    temperature: float = 1.0
    # infilling
    infill_span: int = 8
    infill_rows: int = 32
    infill_sampler: str = "confidence"
    # speed
    speed_samplers: Optional[tuple] = None  # None = samplers + ancestral-nocache
    speed_steps: Optional[tuple] = None  # None = steps
    batch_sizes: tuple = (1, 8, 64)
    lengths: Optional[tuple] = None  # None = (length,) on CPU, (128, 1024) on CUDA
    contexts: tuple = ()  # speed vs context length (diffmamba/block/evaluation.py); () = skip
    speed_prompt_len: int = 0
    warmup: int = 1
    speed_repeats: int = 3
    command: str = ""


def _git_commit() -> Optional[str]:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _systems(opts: EvalOptions) -> list[System]:
    systems = default_systems(opts.diffusion, opts.ar) + list(opts.systems)
    if not systems:
        raise UserError("nothing to evaluate; pass --diffusion CKPT and/or --ar CKPT (or --checkpoint CKPT for "
                        "one checkpoint in both modes)")
    return systems


def _load_previous(path: str, systems: list[dict]) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            prev = json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}
    if prev.get("systems") != systems:
        print(f"{path} holds other systems; starting a new report there", flush=True)
        return {}
    return prev


def rerender(out: str) -> dict:
    """Rewrite report.md and the plots of ``out`` from its results.json (no evaluation)."""
    from diffmamba.eval.report import write_report

    path = os.path.join(out, "results.json")
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{path} is missing or unreadable; run an evaluation into --out {out} first") from None
    paths = write_report(results, out)
    print(f"report: {paths['report']}", flush=True)
    return results


def run_evaluations(opts: EvalOptions, parts: tuple = PARTS) -> dict:
    """Evaluate, write the report, print where it is; returns the results dict."""
    from diffmamba.diffusion.samplers import SAMPLERS
    from diffmamba.eval import generation, infill, likelihood, speed
    from diffmamba.eval.data import load_eval_data
    from diffmamba.eval.loading import autocast, load_checkpoint, require_same_tokenizer, resolve_device, resolve_dtype
    from diffmamba.eval.report import write_report
    from diffmamba.eval.sampling import settings_for

    from diffmamba.eval.decoding import split_sampler
    for name in set(opts.samplers) | set(opts.speed_samplers or ()) | {opts.infill_sampler}:
        if split_sampler(name)[0] not in SAMPLERS:
            raise UserError(f"unknown sampler {name!r}; choose from: {', '.join(SAMPLERS)}")
    systems = _systems(opts)
    from diffmamba.eval.systems import KNOWN_MODES
    for s in systems:
        if s.mode not in KNOWN_MODES:
            raise UserError(f"system {s.name!r} has unknown mode {s.mode!r}; known modes: {', '.join(KNOWN_MODES)}")
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    amp = (lambda: autocast(device, dtype))
    env = speed.environment(device, dtype)
    env_line = speed.format_environment(env)
    print(f"diffmamba eval: {env_line}", flush=True)
    ckpts = {s.checkpoint: load_checkpoint(s.checkpoint, str(device)) for s in systems}
    sys_dicts = [s.as_dict() for s in systems]
    os.makedirs(opts.out, exist_ok=True)
    results = _load_previous(os.path.join(opts.out, "results.json"), sys_dicts)
    notes = list(results.get("notes", []))  # earlier sections' caveats stay with their numbers
    commands = list(dict.fromkeys((results.get("meta") or {}).get("commands", []) + [opts.command]))
    results.update(meta={"created": datetime.datetime.now().isoformat(timespec="seconds"),
                         "command": opts.command, "commands": commands, "environment": env, "environment_line": env_line,
                         "git_commit": _git_commit(), "seed": opts.seed, "options": _jsonable(opts)},
                   systems=sys_dicts, checkpoints={p: c.describe() for p, c in ckpts.items()})
    for c in ckpts.values():
        if c.trained_objective is not None:
            modes = {"block_diffusion" if s.mode == "block" else s.mode for s in systems if s.checkpoint == c.path}
            trained = {"ar", "block_diffusion", "speculative"} if c.trained_objective == "dual" else {c.trained_objective}
            for mode in sorted(modes - trained):
                notes.append(f"[run] checkpoint {c.path} was trained with objective '{c.trained_objective}' and is "
                             f"evaluated in mode '{mode}' as well: those numbers come from weights never trained "
                             "for that mode")
    need_data = {"likelihood", "generate", "infill"} & set(parts)
    data = None
    if need_data:
        require_same_tokenizer(list(ckpts.values()), "likelihood, generation and infilling")
        first = ckpts[systems[0].checkpoint]
        data = load_eval_data(first, opts.data, opts.max_rows, opts.seq_len)
        results["validation"] = data.info
        cfgs = {c.path: c.run_config.data for c in ckpts.values() if c.run_config is not None}
        if len({(d.seq_len, d.packing, d.source) for d in cfgs.values()}) > 1:
            notes.append("[run] the checkpoints were trained on different data settings (seq_len / packing / source); "
                         f"all are scored on the validation rows built from {data.info.get('config_from')}")
    if "likelihood" in parts:
        rows = []
        for s in systems:
            ck = ckpts[s.checkpoint]
            obj = ck.run_config.objective if ck.run_config is not None else None
            if s.is_ar or s.mode == "speculative":  # lossless: speculative samples have AR's law
                r = likelihood.ar_likelihood(ck.model, data.rows, data.valid, bos_id=ck.tokenizer.eos_id,
                                             batch_size=opts.batch_size, device=device, amp=amp(),
                                             desc=f"AR NLL ({s.name})")
            elif s.mode == "block":
                from diffmamba.block.evaluation import block_likelihood
                r = block_likelihood(
                    ck.model, data.rows, data.valid, block_size=s.settings["block_size"],
                    schedule=obj.schedule if obj else "loglinear", schedule_eps=obj.eps if obj else 1e-3,
                    sampling_eps=obj.sampling_eps if obj else 1e-3, repeats=opts.repeats, seed=opts.seed,
                    batch_size=opts.batch_size, device=device, amp=amp(), desc=f"block NELBO ({s.name})",
                    ar_prefix=bool(s.settings.get("ar_prefix")))
            else:
                r = likelihood.diffusion_likelihood(
                    ck.model, data.rows, data.valid, schedule=obj.schedule if obj else "loglinear",
                    schedule_eps=obj.eps if obj else 1e-3, sampling_eps=obj.sampling_eps if obj else 1e-3,
                    repeats=opts.repeats, seed=opts.seed, batch_size=opts.batch_size, device=device, amp=amp(),
                    desc=f"NELBO bound ({s.name})")
            r.update(system=s.name, mode=s.mode, **s.settings)
            rows.append(r)
            print(f"  likelihood {s.name}: {'≤' if r['kind'] == 'bound' else '='} ppl {r['ppl']:.4g} "
                  f"(NLL/token {r['nll_per_token']:.4f}" + (f" ± {r['nll_std']:.4f}" if r['kind'] == 'bound' else "")
                  + ")", flush=True)
        results["likelihood"] = rows
    judge = None
    if "generate" in parts:
        if opts.judge and opts.judge.lower() != "none":
            from diffmamba.eval.judge import load_judge
            judge = load_judge(opts.judge, str(device))
            results["judge"] = {**judge.info, "spec": opts.judge}
            if any(os.path.abspath(opts.judge) == os.path.abspath(p) for p in ckpts):
                notes.append("[run] the judge is one of the compared checkpoints: its gen-PPL favours its own samples")
        else:
            results["judge"] = {"name": "none (gen-PPL not computed)", "kind": "none"}
            notes.append("[run] no judge: gen-PPL not computed; pass --judge smollm2, a HF model folder or an AR checkpoint")
        gen_rows, records = generation.evaluate_generation(
            systems, ckpts, judge, data, tasks=opts.tasks, num_samples=opts.num_samples, length=opts.length,
            prompt_len=opts.prompt_len, batch_size=opts.batch_size, samplers=opts.samplers, steps=opts.steps,
            top_ps=opts.top_p, temperature=opts.temperature, seed=opts.seed, device=device, amp=amp)
        results["generation"] = gen_rows
        with open(os.path.join(opts.out, "samples.jsonl"), "w") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
    if "infill" in parts:
        ck0 = ckpts[systems[0].checkpoint]
        obj = ck0.run_config.objective if ck0.run_config is not None else None
        rows_inf = data.rows[: opts.infill_rows]
        if data.valid is not None:  # only rows without padding inside them
            rows_inf = data.rows[data.valid.all(1)][: opts.infill_rows]
        if rows_inf.shape[0] == 0:
            raise UserError("no validation row is free of padding for infilling; use --data with longer documents "
                            "or a smaller --seq-len")
        if any(s.mode == "block" for s in systems):
            notes.append("[run] block-diffusion systems are left out of infilling: a block sees only its left "
                         "context and its own block, never the text after it")
        results["infill"] = infill.evaluate_infill(
            [s for s in systems if s.mode not in ("block", "speculative")], ckpts, rows_inf, span=opts.infill_span, batch_size=opts.batch_size, sampler=opts.infill_sampler,
            repeats=opts.repeats, seed=opts.seed, device=device, amp=amp,
            schedule=obj.schedule if obj else "loglinear", schedule_eps=obj.eps if obj else 1e-3)
    if "speed" in parts:
        lengths = opts.lengths or ((opts.length,) if device.type == "cpu" else (128, 1024))
        samplers = opts.speed_samplers or tuple(dict.fromkeys(list(opts.samplers) + ["ancestral-nocache"]))
        steps = opts.speed_steps or opts.steps
        print(f"speed: {env_line}", flush=True)
        results["speed"] = speed.evaluate_speed(
            systems, ckpts, lambda s: settings_for(s, list(samplers), list(steps), [opts.top_p[0]], opts.temperature),
            batch_sizes=opts.batch_sizes, lengths=lengths, prompt_len=opts.speed_prompt_len, warmup=opts.warmup,
            repeats=opts.speed_repeats, seed=opts.seed, device=device, amp=amp)
        results["speed_environment"] = env_line
        if opts.contexts:
            from diffmamba.block.evaluation import evaluate_context_speed
            results["context_speed"] = evaluate_context_speed(
                [s for s in systems if s.mode != "speculative"], ckpts, contexts=opts.contexts, length=opts.length, sampler=opts.samplers[0],
                warmup=opts.warmup, repeats=opts.speed_repeats, seed=opts.seed, device=device, amp=amp)
        from diffmamba.eval.report import speed_table
        print(f"speed ({env_line}; median of {opts.speed_repeats} after {opts.warmup} warm-up):\n"
              + speed_table(results["speed"]), flush=True)
    results["notes"] = list(dict.fromkeys(notes))
    paths = write_report(results, opts.out)
    print(f"report: {paths['report']}\nresults: {paths['results']}", flush=True)
    return results


def _jsonable(opts: EvalOptions) -> dict:
    out = {}
    for k, v in vars(opts).items():
        if k == "systems":
            out[k] = [s.as_dict() for s in v]
        elif isinstance(v, tuple):
            out[k] = list(v)
        else:
            out[k] = v
    return out


def command_line() -> str:
    return " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])

