"""Training throughput of the trunks side by side: Mamba-3, attention, hybrid at matched parameters.

    diffmamba bench train                                  # GPU: small trunks, L = 1024 and 4096
    diffmamba bench train --lengths 128 512 --tokens 2048  # CPU defaults (tiny trunks)
    diffmamba bench train --configs configs/model/tiny.yaml configs/model/tiny-attention.yaml
    diffmamba bench train --size small --lengths 1024 --profile   # where one step's time goes, kernel by kernel

One *full optimizer step* per timing: the training objective's loss (``--objective``, the same
function ``diffmamba train`` calls), backward, gradient clipping and the AdamW step, under bf16
autocast on GPU (float32 on CPU). Every trunk sees the same number of tokens per batch
(``--tokens`` = batch x length) at every length. Prints device, dtype, versions, shapes and
parameter counts, then per length and trunk the median step time after warm-up, tokens/s, MFU
(the training loop's FLOP estimate over the GPU's dense bf16 peak; n/a on CPU), peak memory, and
each trunk's tokens/s relative to the attention trunk's, from this one run.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

import torch

from diffmamba.bench.profiling import print_profile
from diffmamba.config import ObjectiveConfig, TrainConfig, load_model_config
from diffmamba.core.device import autocast, resolve_device
from diffmamba.core.errors import UserError
from diffmamba.core.io import write_json
from diffmamba.core.paths import MODEL_CONFIGS
from diffmamba.eval.speed import environment, format_environment, measure
from diffmamba.eval.trunks import trunk_name
from diffmamba.model import DiffMamba
from diffmamba.objectives import OBJECTIVES, MicroBatch
from diffmamba.train.log import device_peak_flops, format_mfu, model_flops_utilization
from diffmamba.train.optim import build_optimizer

TRUNKS = ("", "-attention", "-hybrid")  # configs/model/{size}{trunk}.yaml


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="diffmamba bench train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=None, metavar="YAML",
                        help="model configs to compare (default: configs/model/SIZE.yaml, SIZE-attention.yaml and "
                             "SIZE-hybrid.yaml, SIZE = small on GPU, tiny on CPU)")
    parser.add_argument("--size", choices=("tiny", "small"), default=None,
                        help="which shipped configs to use without --configs (default: small on GPU, tiny on CPU)")
    parser.add_argument("--lengths", nargs="+", type=int, default=None,
                        help="sequence lengths (default: 1024 4096 on GPU, 128 512 on CPU)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="tokens per optimizer step = batch x length, the same for every trunk and length "
                             "(default: 16384 on GPU, 2048 on CPU); must be a multiple of every length")
    parser.add_argument("--objective", choices=("diffusion", "ar", "block_diffusion", "dual"), default="diffusion",
                        help="training loss (default diffusion)")
    parser.add_argument("--block-size", type=int, default=16, help="L' for --objective block_diffusion or dual (default 16)")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps; the median is reported (default 5)")
    parser.add_argument("--profile", action="store_true",
                        help="also print each configuration's ops and kernels by self time over one step "
                             "(torch.profiler) and the kernels it launches: where the step's time goes")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the rows and environment here")
    args = parser.parse_args(argv)
    for name in ("warmup", "repeats", "block_size"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be >= {0 if name == 'warmup' else 1}")
    return args


def model_configs(args, device: torch.device) -> list:
    paths = args.configs
    if paths is None:
        size = args.size or ("small" if device.type == "cuda" else "tiny")
        paths = [os.path.join(MODEL_CONFIGS, f"{size}{trunk}.yaml") for trunk in TRUNKS]
    configs = []
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"model config {path} does not exist; pass files such as configs/model/tiny.yaml")
        configs.append((path, load_model_config(path)))
    return configs


def optimizer_step(model, optimizer, objective, tokens_of, device, amp_dtype):
    """One full optimizer step on a fresh random batch: loss, backward, clip, AdamW; returns the loss."""
    tokens = tokens_of()
    batch = MicroBatch(tokens, None, 0, 1, 0, 1, torch.Generator().manual_seed(0),
                       torch.Generator(device=device).manual_seed(0))
    with autocast(device, amp_dtype):
        nll = OBJECTIVES[objective.name].train(model, batch, objective)
    loss = nll.total / nll.count
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def bench_one(cfg, length: int, batch: int, args, device, amp_dtype) -> dict:
    if length > cfg.max_seq_len:
        cfg = dataclasses.replace(cfg, max_seq_len=length)
    torch.manual_seed(0)
    model = DiffMamba(cfg).to(device).train()
    optimizer = build_optimizer(model, TrainConfig())
    blocked = args.objective in ("block_diffusion", "dual")
    objective = ObjectiveConfig(name=args.objective, block_size=args.block_size if blocked else 0)
    if blocked and length % objective.block_size:
        raise UserError(f"--block-size {objective.block_size} does not divide the length {length}")
    generator = torch.Generator(device=device).manual_seed(0)

    def tokens_of():
        return torch.randint(0, cfg.vocab_size, (batch, length), generator=generator, device=device)

    def step():
        return optimizer_step(model, optimizer, objective, tokens_of, device, amp_dtype)

    timing = measure(step, device, warmup=args.warmup, repeats=args.repeats)
    if args.profile:
        print_profile(f"{trunk_name(cfg)} L={length}, one optimizer step", step, device.type, calls=1, rows=25)
    tokens_per_s = batch * length / timing.median_s
    flops_per_token = model.estimate_flops_per_token(length, mode=OBJECTIVES[args.objective].model_mode)
    row = {"trunk": trunk_name(cfg), "layers": cfg.layer_kinds, "length": length, "batch": batch,
           "tokens_per_step": batch * length, "params": model.num_parameters(),
           "non_embedding_params": model.num_parameters(non_embedding=True), "step_s": timing.median_s,
           "tokens_per_s": tokens_per_s, "flops_per_token": flops_per_token,
           "mfu": model_flops_utilization(flops_per_token, tokens_per_s, device_peak_flops(device), 1),
           "peak_mem_mib": timing.peak_mem_mib,
           "mem_label": timing.mem_label, "final_loss": float(timing.result)}
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    lengths = args.lengths or ([1024, 4096] if on_gpu else [128, 512])
    tokens = args.tokens or (16384 if on_gpu else 2048)
    for length in lengths:
        if length < 2 or tokens % length:
            raise UserError(f"--tokens {tokens} is not a multiple of the length {length}; pick --tokens as a "
                            f"multiple of every --lengths value (e.g. {max(lengths) * 4})")
    amp_dtype = torch.bfloat16 if on_gpu else torch.float32
    configs = model_configs(args, device)
    env = environment(device, amp_dtype)
    print(f"diffmamba bench train: {format_environment(env)}")
    print(f"objective {args.objective}, {tokens} tokens per optimizer step (batch x length), AdamW + clip, "
          f"{'bf16 autocast' if on_gpu else 'float32'}; median of {args.repeats} steps after {args.warmup} warm-up")
    rows = []
    for length in lengths:
        for path, cfg in configs:
            row = bench_one(cfg, length, tokens // length, args, device, amp_dtype)
            row["config"] = os.path.relpath(path)
            rows.append(row)
            print(f"  L={length:<5} {row['trunk']:<16} {row['step_s'] * 1e3:9.1f} ms/step "
                  f"{row['tokens_per_s']:11,.0f} tokens/s  MFU {format_mfu(row['mfu'])}", flush=True)
    print(table(rows))
    if args.json:
        write_json(args.json, {"environment": env, "objective": args.objective, "tokens_per_step": tokens,
                               "rows": rows})
    return 0


def table(rows: list[dict]) -> str:
    """Markdown table; 'vs attention' = tokens/s over the all-attention trunk's at the same length."""
    reference = {r["length"]: r["tokens_per_s"] for r in rows if r["trunk"] == "attention"}
    lines = ["| L | trunk | layers | params (non-emb.) | batch | ms/step | tokens/s | MFU | vs attention | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['tokens_per_s'] / reference[r['length']]:.2f}x" if r["length"] in reference else "-"
        lines.append(f"| {r['length']} | {r['trunk']} | {r['layers']} | {r['params'] / 1e6:.2f}M "
                     f"({r['non_embedding_params'] / 1e6:.2f}M) | {r['batch']} | {r['step_s'] * 1e3:.1f} | "
                     f"{r['tokens_per_s']:,.0f} | {format_mfu(r['mfu'])} | {ratio} | {r['peak_mem_mib']:.0f} |")
    label = rows[0]["mem_label"] if rows else ""
    return "\n".join(lines) + f"\npeak MiB: {label}; MFU: training FLOPs per token x tokens/s over the dense bf16 peak"


if __name__ == "__main__":
    raise SystemExit(main())
