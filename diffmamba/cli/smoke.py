"""Forward + backward smoke test of a freshly initialised model, in diffusion and AR mode.

    diffmamba smoke                                   # tiny model on the GPU if any, else CPU
    diffmamba smoke --steps 5 --batch-size 4 --seq-len 64
    diffmamba smoke --set mimo_rank=2 --set tie=none  # any ModelConfig field
    diffmamba smoke --config configs/model/small.yaml --device cuda --dtype bf16

Each step draws random tokens, masks 30% of them for the diffusion loss (cross-entropy on the
masked positions) or shifts them for the AR loss, and runs backward. It prints the parameter
count, the device and the median time per step, and fails (exit 1) on a non-finite loss or
gradient. Nothing is trained or saved.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffmamba.config import ModelConfig, load_model_config
from diffmamba.core.errors import UserError
from diffmamba.core.paths import MODEL_CONFIGS
from diffmamba.model import DiffMamba

DEFAULT_CONFIG = os.path.join(MODEL_CONFIGS, "tiny.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="YAML",
                        help="model config (default: configs/model/tiny.yaml of this checkout, or the "
                             "ModelConfig defaults when the package was installed without it)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a model field, e.g. --set d_model=64 (repeatable)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode, after one warm-up (default 3)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=("float32", "bf16"), default="float32",
                        help="bf16 runs under autocast with float32 weights (default float32)")
    parser.add_argument("--seed", type=int, default=0)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no GPU; use --device cpu (or auto)")
    return device


def _load_model_config(path, overrides) -> tuple[ModelConfig, str]:
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    return load_model_config(path, overrides), path or "ModelConfig defaults"


def _loss(model, tokens: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    if mode == "ar":
        logits = model(tokens[:, :-1], mode="ar")
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
    masked = torch.rand(tokens.shape, generator=generator, device=tokens.device) < 0.3
    masked[:, 0] = True  # at least one target per row
    noisy = tokens.masked_fill(masked, model.mask_token_id)
    logits = model(noisy, mode="diffusion")
    return F.cross_entropy(logits[masked].float(), tokens[masked])


def run(args: argparse.Namespace) -> int:


    for name in ("steps", "batch_size", "seq_len"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    device = _resolve_device(args.device)
    cfg, source = _load_model_config(args.config, args.overrides)
    if args.seq_len > cfg.max_seq_len:
        raise UserError(f"--seq-len {args.seq_len} is above model.max_seq_len = {cfg.max_seq_len}; lower it")
    torch.manual_seed(args.seed)
    model = DiffMamba(cfg).to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    print(f"model: {source} | {model.num_parameters():,} parameters "
          f"({model.num_parameters(non_embedding=True):,} without the embedding) | "
          f"d_model {cfg.d_model}, {cfg.n_layers} layers {cfg.layer_kinds} (M = Mamba-3, A = attention), "
          f"tie {cfg.tie}, mimo_rank {cfg.mimo_rank}")
    print(f"device: {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''} | "
          f"dtype {args.dtype} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"batch {args.batch_size} x {args.seq_len} tokens")

    ok = True
    for mode in ("diffusion", "ar"):
        seconds = []
        bar = tqdm(range(args.steps + 1), desc=f"{mode:>9}", unit="step", leave=False)
        for step in bar:
            tokens = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len),
                                   generator=generator, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
                loss = _loss(model, tokens, mode, generator)
            model.zero_grad(set_to_none=True)
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step > 0:  # the first step pays for allocation and kernel compilation
                seconds.append(time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        grads_finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        finite = bool(torch.isfinite(loss)) and grads_finite
        ok &= finite
        median = statistics.median(seconds)
        tokens_per_s = args.batch_size * args.seq_len / median
        print(f"{mode:>9}: loss {loss.item():.4f} (ln V = {torch.log(torch.tensor(float(cfg.vocab_size))):.4f}) | "
              f"{median * 1000:.1f} ms/step forward+backward (median of {len(seconds)}) | "
              f"{tokens_per_s:,.0f} tokens/s | {'finite' if finite else 'NON-FINITE loss or gradients'}")
    return 0 if ok else 1
