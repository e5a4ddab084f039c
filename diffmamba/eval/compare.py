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
from typing import Callable, Optional

from diffmamba.core.device import autocast, resolve_device, resolve_dtype
from diffmamba.core.errors import UserError
from diffmamba.core.io import atomic_open
from diffmamba.core.outputs import check_out_dir
from diffmamba.core.runlock import FolderLock
from diffmamba.eval import generation, infill, likelihood, speed
from diffmamba.eval.bd3lm import block_likelihood, evaluate_context_speed
from diffmamba.eval.data import load_eval_data
from diffmamba.eval.decoding import split_sampler
from diffmamba.eval.judge import load_judge
from diffmamba.eval.loading import load_checkpoint, require_same_tokenizer
from diffmamba.eval.report import write_report
from diffmamba.eval.report.tables import speed_table
from diffmamba.eval.sampling import settings_for
from diffmamba.eval.sections import SectionStore, signatures
from diffmamba.eval.systems import KNOWN_MODES, System, default_systems
from diffmamba.eval.trunks import evaluate_cache_bytes
from diffmamba.sampling.graphs import check_graph_device
from diffmamba.sampling.registry import SAMPLERS

PARTS = ("likelihood", "generate", "infill", "speed")


@dataclass
class EvalOptions:
    out: str
    diffusion: tuple = ()  # checkpoints evaluated in diffusion mode, each its own system
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
    contexts: tuple = ()  # speed vs context length (diffmamba/eval/bd3lm.py); () = skip
    speed_prompt_len: int = 0
    warmup: int = 1
    speed_repeats: int = 3
    cuda_graph: Optional[bool] = None  # speed: calls replayed from CUDA graphs (None: where they work)
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

    path = os.path.join(out, "results.json")
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{path} is missing or unreadable; run an evaluation into --out {out} first") from None
    paths = write_report(results, out)
    print(f"report: {paths['report']}", flush=True)
    return results


@dataclass
class _Run:
    """What every section of one ``run_evaluations`` call shares."""

    opts: EvalOptions
    systems: list[System]
    ckpts: dict
    device: object
    amp: Callable
    results: dict
    notes: list[str]
    data: object = None
    judge: object = None  # loaded before any section runs (when generation is to run and --judge is set)


def run_evaluations(opts: EvalOptions, parts: tuple = PARTS) -> dict:
    """Evaluate, write the report, print where it is; returns the results dict."""
    _check_samplers(opts)
    systems = _systems(opts)
    _check_modes(systems)
    device = resolve_device(opts.device)
    if opts.cuda_graph:
        check_graph_device(device)
    dtype = resolve_dtype(opts.dtype, device)
    check_out_dir(opts.out)
    if opts.data is not None and not os.path.exists(opts.data):
        raise UserError(f"--data {opts.data} does not exist; pass a text file, a .jsonl file or a folder of .txt files")
    # One evaluation at a time writes into a folder (diffmamba/core/runlock.py).
    with FolderLock(opts.out, "evaluation"):
        return _evaluate(opts, parts, systems, device, dtype)


def _evaluate(opts: EvalOptions, parts: tuple, systems: list[System], device, dtype) -> dict:
    env = speed.environment(device, dtype)
    print(f"diffmamba eval: {speed.format_environment(env)}", flush=True)
    ckpts = {s.checkpoint: load_checkpoint(s.checkpoint, str(device)) for s in systems}
    os.makedirs(opts.out, exist_ok=True)
    sys_dicts = [s.as_dict() for s in systems]
    results = _load_previous(os.path.join(opts.out, "results.json"), sys_dicts)
    run = _Run(opts, systems, ckpts, device, lambda: autocast(device, dtype), results,
               notes=list(results.get("notes", [])))  # earlier sections' caveats stay with their numbers
    commands = list(dict.fromkeys((results.get("meta") or {}).get("commands", []) + [opts.command]))
    results.update(meta={"created": datetime.datetime.now().isoformat(timespec="seconds"),
                         "command": opts.command, "commands": commands, "environment": env,
                         "environment_line": speed.format_environment(env), "git_commit": _git_commit(),
                         "seed": opts.seed, "options": _jsonable(opts)},
                   systems=sys_dicts, checkpoints={p: c.describe() for p, c in ckpts.items()})
    # Sections an earlier run into this folder finished with the same settings are kept (eval/sections.py).
    store = SectionStore(opts.out, results, results, signatures(_jsonable(opts), results["checkpoints"]))
    todo = [part for part in PARTS if part in parts and not store.done(part)]
    if "generate" in todo and opts.judge and opts.judge.lower() != "none":
        run.judge = load_judge(opts.judge, str(device))  # before any evaluation: a bad --judge costs nothing
    _note_untrained_modes(run)
    if {"likelihood", "generate", "infill"} & set(todo):
        _load_data(run)
        _check_data(opts, run.data, todo)  # before any section runs: a late refusal would waste the earlier ones
    for part, section in (("likelihood", _likelihood), ("generate", _generation), ("infill", _infill),
                          ("speed", _speed)):
        if part in todo:
            section(run)
            store.finish(part)  # results.json now holds this section: an interruption keeps it
    results["notes"] = list(dict.fromkeys(run.notes))
    paths = write_report(results, opts.out)
    print(f"report: {paths['report']}\nresults: {paths['results']}", flush=True)
    return results


def _check_samplers(opts: EvalOptions) -> None:
    for name in set(opts.samplers) | set(opts.speed_samplers or ()) | {opts.infill_sampler}:
        if split_sampler(name)[0] not in SAMPLERS:  # "parallel:0.9" is the parallel sampler at threshold 0.9
            raise UserError(f"unknown sampler {name!r}; choose from: {', '.join(SAMPLERS)}")


def _check_modes(systems: list[System]) -> None:
    for s in systems:
        if s.mode not in KNOWN_MODES:
            raise UserError(f"system {s.name!r} has unknown mode {s.mode!r}; known modes: {', '.join(KNOWN_MODES)}")


def _note_untrained_modes(run: _Run) -> None:
    for c in run.ckpts.values():
        if c.trained_objective is not None:
            modes = {"block_diffusion" if s.mode == "block" else s.mode for s in run.systems if s.checkpoint == c.path}
            # a dual checkpoint is trained for AR, block diffusion (on AR states) and so for speculative decoding
            trained = ({"ar", "block_diffusion", "speculative"} if c.trained_objective == "dual"
                       else {c.trained_objective})
            for mode in sorted(modes - trained):
                run.notes.append(f"[run] checkpoint {c.path} was trained with objective '{c.trained_objective}' and "
                                 f"is evaluated in mode '{mode}' as well: those numbers come from weights never "
                                 "trained for that mode")


def _load_data(run: _Run) -> None:
    require_same_tokenizer(list(run.ckpts.values()), "likelihood, generation and infilling")
    first = run.ckpts[run.systems[0].checkpoint]
    run.data = load_eval_data(first, run.opts.data, run.opts.max_rows, run.opts.seq_len)
    run.results["validation"] = run.data.info
    cfgs = {c.path: c.run_config.data for c in run.ckpts.values() if c.run_config is not None}
    if len({(d.seq_len, d.packing, d.source) for d in cfgs.values()}) > 1:
        run.notes.append("[run] the checkpoints were trained on different data settings (seq_len / packing / "
                         f"source); all are scored on the validation rows built from {run.data.info.get('config_from')}")


def _schedule_of(ckpt) -> dict:
    """The noise schedule a checkpoint was trained with (the defaults when it has no run config)."""
    obj = ckpt.run_config.objective if ckpt.run_config is not None else None
    return {"schedule": obj.schedule if obj else "loglinear", "schedule_eps": obj.eps if obj else 1e-3,
            "sampling_eps": obj.sampling_eps if obj else 1e-3}


def _likelihood(run: _Run) -> None:
    opts, data, rows = run.opts, run.data, []
    for s in run.systems:
        ck = run.ckpts[s.checkpoint]
        common = dict(batch_size=opts.batch_size, device=run.device, amp=run.amp())
        if s.is_ar or s.mode == "speculative":  # lossless: speculative samples have AR's law
            r = likelihood.ar_likelihood(ck.model, data.rows, data.valid, bos_id=ck.tokenizer.eos_id,
                                         desc=f"AR NLL ({s.name})", **common)
        elif s.mode == "block":
            r = block_likelihood(ck.model, data.rows, data.valid, block_size=s.settings["block_size"],
                                 repeats=opts.repeats, seed=opts.seed, desc=f"block NELBO ({s.name})",
                                 ar_prefix=bool(s.settings.get("ar_prefix")), **_schedule_of(ck), **common)
        else:
            r = likelihood.diffusion_likelihood(ck.model, data.rows, data.valid, repeats=opts.repeats, seed=opts.seed,
                                                desc=f"NELBO bound ({s.name})", **_schedule_of(ck), **common)
        r.update(system=s.name, mode=s.mode, **s.settings)
        rows.append(r)
        print(f"  likelihood {s.name}: {'≤' if r['kind'] == 'bound' else '='} ppl {r['ppl']:.4g} "
              f"(NLL/token {r['nll_per_token']:.4f}" + (f" ± {r['nll_std']:.4f}" if r['kind'] == 'bound' else "")
              + ")", flush=True)
    run.results["likelihood"] = rows


def _generation(run: _Run) -> None:
    opts, judge = run.opts, run.judge
    if judge is not None:
        run.results["judge"] = {**judge.info, "spec": opts.judge}
        if any(os.path.abspath(opts.judge) == os.path.abspath(p) for p in run.ckpts):
            run.notes.append("[run] the judge is one of the compared checkpoints: its gen-PPL favours its own samples")
    else:
        run.results["judge"] = {"name": "none (gen-PPL not computed)", "kind": "none"}
        run.notes.append("[run] no judge: gen-PPL not computed; pass --judge smollm2, a HF model folder or an AR "
                         "checkpoint")
    gen_rows, records = generation.evaluate_generation(
        run.systems, run.ckpts, judge, run.data, tasks=opts.tasks, num_samples=opts.num_samples, length=opts.length,
        prompt_len=opts.prompt_len, batch_size=opts.batch_size, samplers=opts.samplers, steps=opts.steps,
        top_ps=opts.top_p, temperature=opts.temperature, seed=opts.seed, device=run.device, amp=run.amp)
    run.results["generation"] = gen_rows
    with atomic_open(os.path.join(opts.out, "samples.jsonl"), "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")


def _infill(run: _Run) -> None:
    opts, rows = run.opts, _infill_rows(run.opts, run.data)  # not empty: _check_data made sure
    if any(s.mode == "block" for s in run.systems):
        run.notes.append("[run] block-diffusion systems are left out of infilling: a block sees only its left "
                         "context and its own block, never the text after it")
    schedule = _schedule_of(run.ckpts[run.systems[0].checkpoint])
    run.results["infill"] = infill.evaluate_infill(
        [s for s in run.systems if s.mode not in ("block", "speculative")], run.ckpts, rows, span=opts.infill_span,
        batch_size=opts.batch_size, sampler=opts.infill_sampler, repeats=opts.repeats, seed=opts.seed,
        device=run.device, amp=run.amp, schedule=schedule["schedule"], schedule_eps=schedule["schedule_eps"])


def _infill_rows(opts: EvalOptions, data):
    """The validation rows infilling uses: the first --infill-rows without padding inside them."""
    rows = data.rows if data.valid is None else data.rows[data.valid.all(1)]
    return rows[: opts.infill_rows]


def _speed(run: _Run) -> None:
    opts, env_line = run.opts, run.results["meta"]["environment_line"]
    lengths = opts.lengths or ((opts.length,) if run.device.type == "cpu" else (128, 1024))
    samplers = opts.speed_samplers or tuple(dict.fromkeys(list(opts.samplers) + ["ancestral-nocache"]))
    steps = opts.speed_steps or opts.steps
    print(f"speed: {env_line}", flush=True)
    run.results["speed"] = speed.evaluate_speed(
        run.systems, run.ckpts,
        lambda s: settings_for(s, list(samplers), list(steps), [opts.top_p[0]], opts.temperature),
        batch_sizes=opts.batch_sizes, lengths=lengths, prompt_len=opts.speed_prompt_len, warmup=opts.warmup,
        repeats=opts.speed_repeats, seed=opts.seed, device=run.device, amp=run.amp, cuda_graph=opts.cuda_graph)
    graphed = sorted({row["system"] for row in run.results["speed"] if row.get("cuda_graph")})
    if graphed:
        env_line += f"; replayed from CUDA graphs (captured in the warm-up): {', '.join(graphed)}"
    run.results["speed_environment"] = env_line
    if opts.contexts:
        run.results["context_speed"] = evaluate_context_speed(
            [s for s in run.systems if s.mode != "speculative"], run.ckpts, contexts=opts.contexts,
            length=opts.length, sampler=opts.samplers[0],
            warmup=opts.warmup, repeats=opts.speed_repeats, seed=opts.seed, device=run.device, amp=run.amp)
        run.results["cache_bytes"] = evaluate_cache_bytes(run.systems, run.ckpts, opts.contexts, opts.seed,
                                                          run.device)
    print(f"speed ({env_line}; median of {opts.speed_repeats} after {opts.warmup} warm-up):\n"
          + speed_table(run.results["speed"]), flush=True)


def _check_data(opts: EvalOptions, data, todo: list[str]) -> None:
    """The checks generation and infilling make on the validation rows, made before any section runs."""
    rows, length = data.rows.shape
    if "generate" in todo and "prompted" in opts.tasks:
        if opts.prompt_len >= length:
            raise UserError(f"--prompt-len {opts.prompt_len} leaves nothing to continue in validation rows of "
                            f"{length} tokens; use a smaller --prompt-len")
        if rows < opts.num_samples:
            raise UserError(f"only {rows} validation rows for {opts.num_samples} prompts; lower --num-samples or "
                            "raise --max-rows")
    if "infill" in todo and _infill_rows(opts, data).shape[0] == 0:
        raise UserError("no validation row is free of padding for infilling; use --data with longer documents "
                        "or a smaller --seq-len")


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

