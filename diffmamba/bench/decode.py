"""Per-token latency of AR decoding: eager steps against a CUDA-graph replay, over context length.

    diffmamba bench decode                                   # GPU: small (130M), batch 1 and 64, context 512 and 8192
    diffmamba bench decode --config configs/model/demo.yaml --batch-sizes 1 8
    diffmamba bench decode --checkpoint runs/demo-ar          # a trained model's shape and weights
    diffmamba bench decode --batch-sizes 1 --contexts 512 --profile   # which kernels a token launches

After a prefill of ``--contexts`` random tokens, each measurement times ``--tokens`` consecutive
decode steps (a fixed token fed back; no sampling, so only the model's step is timed): eager
``model.step`` calls and, on CUDA, the step replayed from a CUDA graph
(``diffmamba.sampling.graphs.GraphedStep``), each also with the fused step kernel
(``DIFFMAMBA_STEP=fused``: a Mamba-3 layer's input transform, step and gate in one launch). Prints per-token microseconds, tokens/s, the graph's
speed-up, each one's time at the longest context over its time at the shortest (a recurrent
state is the same size at every context, so 1.0 is the ideal; an attention layer's KV cache
grows, and its trunks are timed eagerly only), and on a GPU the memory-traffic floor of a step:
every weight read once (bf16 under CUDA autocast, else the weights' dtype) plus the Mamba-3 states
read and written and the KV caches read, at ``--bw`` bytes/s.
"""
from __future__ import annotations

import argparse
import os

import torch

from diffmamba.bench.kernels import env
from diffmamba.bench.profiling import print_profile
from diffmamba.config import load_model_config
from diffmamba.core.device import autocast, resolve_device, triton_interpreting
from diffmamba.core.errors import UserError
from diffmamba.core.io import write_json
from diffmamba.core.paths import MODEL_CONFIGS
from diffmamba.eval.speed import environment, format_environment, measure
from diffmamba.eval.trunks import cache_bytes
from diffmamba.model import DiffMamba
from diffmamba.modules.attention import KVCache
from diffmamba.ops.scan import STEP_ENV_VAR
from diffmamba.sampling.graphs import GraphedStep, graphable

PREFILL_CHUNK = 1024  # prompt tokens per prefill call: bounded memory at long contexts


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="diffmamba bench decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, metavar="YAML",
                   help="model config (default: configs/model/small.yaml on GPU, tiny.yaml on CPU); fresh weights")
    p.add_argument("--checkpoint", default=None, metavar="DIR", help="a run folder or final/ instead of --config")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None, metavar="B",
                   help="(default: 1 64 on GPU, 1 8 on CPU)")
    p.add_argument("--contexts", nargs="+", type=int, default=None, metavar="T",
                   help="prefilled tokens before the timed steps (default: 512 8192 on GPU, 64 512 on CPU)")
    p.add_argument("--tokens", type=int, default=64, help="decode steps per timing (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="timings per row; the median is printed (default 5)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--bw", type=float, default=3.0e12, help="memory ceiling, bytes/s (measured H100: 3.0e12)")
    p.add_argument("--interpreter", action="store_true",
                   help="CPU only, with TRITON_INTERPRET=1 set: also run the fused step kernel's row in the Triton "
                        "interpreter (a harness check: its time means nothing)")
    p.add_argument("--profile", action="store_true",
                   help="also print each row's ops and kernels by self time (torch.profiler) and the kernels one "
                        "token launches (on CPU: aten ops dispatched)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows and environment here")
    args = p.parse_args(argv)
    if args.config is not None and args.checkpoint is not None:
        raise UserError("pass --config or --checkpoint, not both")
    for name in ("batch_sizes", "contexts"):
        if getattr(args, name) is not None and min(getattr(args, name)) < 1:
            raise UserError(f"--{name.replace('_', '-')} must all be >= 1")
    if args.tokens < 1 or args.repeats < 1 or args.bw <= 0:
        raise UserError("--tokens and --repeats must be >= 1 and --bw > 0")
    if args.interpreter and not triton_interpreting():
        raise UserError("--interpreter runs the Triton kernels on the CPU: set TRITON_INTERPRET=1 in the environment")
    return args


def load_model(args, device: torch.device) -> DiffMamba:
    if args.checkpoint is not None:
        from diffmamba.model_folder import find_model_dir, load_model_folder  # lazy: only with --checkpoint
        return load_model_folder(find_model_dir(args.checkpoint)).to(device).eval()
    path = args.config or os.path.join(MODEL_CONFIGS, "small.yaml" if device.type == "cuda" else "tiny.yaml")
    if not os.path.isfile(path):
        raise UserError(f"model config {path} does not exist; pass one such as configs/model/tiny.yaml")
    torch.manual_seed(0)
    return DiffMamba(load_model_config(path)).to(device).eval()


def step_mode(mode: str):
    """``$DIFFMAMBA_STEP`` set to ``mode`` inside the block (the decode step, ``ops.scan.fused_step_entry``)."""
    return env(**{STEP_ENV_VAR: mode})


def traffic_floor_bytes(model: DiffMamba, state: list, amp: bool) -> tuple[int, int]:
    """(bytes of weights one step reads, bytes of cache it moves): a Mamba-3 state is read and
    written whole; an attention layer's KV cache is read whole (its one new entry is negligible)."""
    weight_bytes = sum(p.numel() * (2 if amp else p.element_size()) for p in model.parameters())
    state_bytes = sum(cache_bytes([layer]) * (1 if isinstance(layer, KVCache) else 2) for layer in state)
    return weight_bytes, state_bytes


@torch.no_grad()
def bench_row(model, batch: int, context: int, args, device, amp_dtype) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (batch, context), generator=gen).to(device)
    token = prompt[:, -1].clone()
    with autocast(device, amp_dtype):
        state = None
        for chunk in prompt.split(PREFILL_CHUNK, dim=1):
            _, state = model.prefill(chunk, state=state)

        def eager():
            s = state
            for _ in range(args.tokens):
                _, s = model.step(token, s)

        steps = {"eager": eager}
        rows = [("eager", measure(eager, device, warmup=1, repeats=args.repeats))]
        on_gpu, mamba_only = device.type == "cuda", graphable(model, "ar")
        if mamba_only and (on_gpu or args.interpreter):  # the fused step (on CPU: a harness check in the interpreter)
            with step_mode("fused"):
                steps["eager fused"] = eager
                rows.append(("eager fused", measure(eager, device, warmup=int(on_gpu),
                                                    repeats=args.repeats if on_gpu else 1)))
        if on_gpu and mamba_only:
            for fused in (False, True):  # the decode step unfused, then as one kernel per layer (DIFFMAMBA_STEP)
                suffix = " fused" if fused else ""
                with step_mode("fused" if fused else "unfused"):
                    graphed = GraphedStep(model, state)  # captured with this step

                def replay(graphed=graphed):
                    for _ in range(args.tokens):
                        graphed(token)

                steps["cuda-graph" + suffix] = replay
                rows.append(("cuda-graph" + suffix, measure(replay, device, warmup=1, repeats=args.repeats)))
        if args.profile:
            for impl, fn in steps.items():
                with step_mode("fused" if "fused" in impl else "unfused"):
                    print_profile(f"batch {batch}, context {context}, {impl}", fn, device.type, calls=1,
                                  per=args.tokens, unit="token")
    weights, states = traffic_floor_bytes(model, state, amp_dtype != torch.float32)
    floor_us = (weights + states) / args.bw * 1e6 if device.type == "cuda" else None  # --bw is a GPU's
    out = []
    for impl, timing in rows:
        per_token = timing.median_s / args.tokens
        out.append({"impl": impl, "batch": batch, "context": context, "us_per_token": per_token * 1e6,
                    "tokens_per_s": batch / per_token, "floor_us": floor_us,
                    "weight_bytes": weights, "state_bytes": states})
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    batches = args.batch_sizes or ([1, 64] if on_gpu else [1, 8])
    contexts = args.contexts or ([512, 8192] if on_gpu else [64, 512])
    amp_dtype = torch.bfloat16 if on_gpu else torch.float32
    model = load_model(args, device)
    if not on_gpu:
        print("no CUDA device: timing eager steps only (a CUDA graph needs a GPU)")
    elif not graphable(model, "ar"):
        print("attention layers (a KV cache that grows with the context): timing eager steps only")
    env = environment(device, amp_dtype)
    print(f"diffmamba bench decode: {format_environment(env)}")
    floor = f"; floor = weights + states at {args.bw / 1e12:.2f} TB/s" if on_gpu else ""
    print(f"{model.num_parameters() / 1e6:.2f}M parameters, layers {model.config.layer_kinds}; {args.tokens} steps "
          f"per timing, median of {args.repeats}{floor}")
    rows = []
    for batch in batches:
        for context in contexts:
            for row in bench_row(model, batch, context, args, device, amp_dtype):
                rows.append(row)
                floor = "" if row["floor_us"] is None else f"  floor {row['floor_us']:.1f} us"
                print(f"  batch {batch:<4} context {context:<6} {row['impl']:<16} {row['us_per_token']:10.1f} us/token "
                      f"{row['tokens_per_s']:12,.0f} tokens/s{floor}", flush=True)
    print(table(rows))
    if args.json:
        write_json(args.json, {"environment": env, "tokens": args.tokens, "rows": rows})
    return 0


def table(rows: list[dict]) -> str:
    """Markdown: per row the graph's speed-up over eager, and t(context) / t(shortest context)."""
    eager = {(r["batch"], r["context"]): r["us_per_token"] for r in rows if r["impl"] == "eager"}
    shortest = {}
    for r in rows:
        key = (r["impl"], r["batch"])
        shortest[key] = min(shortest.get(key, (r["context"], r["us_per_token"])), (r["context"], r["us_per_token"]))
    lines = ["| batch | context | impl | us/token | tokens/s | vs eager | t / t(shortest context) | % of floor-speed |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speedup = eager[(r["batch"], r["context"])] / r["us_per_token"]
        flat = r["us_per_token"] / shortest[(r["impl"], r["batch"])][1]
        of_floor = "-" if r["floor_us"] is None else f"{100 * r['floor_us'] / r['us_per_token']:.1f}"
        lines.append(f"| {r['batch']} | {r['context']} | {r['impl']} | {r['us_per_token']:.1f} | "
                     f"{r['tokens_per_s']:,.0f} | {speedup:.2f}x | {flat:.2f} | {of_floor} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
