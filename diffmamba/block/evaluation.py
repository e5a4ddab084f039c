"""Block diffusion in the comparison report: the L' dial next to AR decoding and full diffusion.

Hooks used by ``diffmamba.eval`` (systems of ``mode="block"``, settings ``{"block_size": L'}``):

- ``eval_options.block_systems``: systems from ``--block CKPT`` (L' from each run config, or
  ``--block-sizes``).
- ``block_likelihood``: the block NELBO on the validation rows (same dict as the diffusion bound;
  L' = 1 is exact, ``kind="exact"``).
- ``generate_block_batch``: samples for quality and speed rows (``block_sample``, steps per block).
- ``evaluate_context_speed``: tokens/s and latency of generating ``length`` tokens after contexts
  of growing length, for every system: the cached block sampler (flat per block), full-sequence
  diffusion (every step re-reads the context) and AR decoding (constant per token); prompt
  prefill time is reported apart.
- ``report.dial_section`` / ``report.plot_dial``: the report's "L' dial" table and plot.
"""
from __future__ import annotations

import contextlib
import math
import statistics
from typing import Optional, Sequence

import torch

from diffmamba.errors import UserError


# --------------------------------------------------------------------------------- likelihood

def block_likelihood(model, rows: torch.Tensor, valid: Optional[torch.Tensor], *, block_size: int,
                     schedule: str = "loglinear", schedule_eps: float = 1e-3, sampling_eps: float = 1e-3,
                     repeats: int = 3, seed: int = 0, batch_size: int = 8, device=None, amp=None,
                     desc: str = "block NELBO", ar_prefix: bool = False) -> dict:
    """Block NELBO over all rows (the same dict as ``diffusion_likelihood``); exact when L' = 1.

    Raises UserError when ``block_size`` does not divide the row length, naming the divisors."""
    from tqdm.auto import tqdm

    from diffmamba.block.loss import block_diffusion_nll
    from diffmamba.diffusion.schedule import make_schedule

    length = rows.shape[1]
    if length % block_size:
        divisors = [d for d in range(1, length + 1) if length % d == 0]
        raise UserError(f"block size {block_size} does not divide the validation row length {length}; pick one of "
                        f"{', '.join(map(str, divisors[:12]))} or pass --seq-len a multiple of {block_size}")
    exact = block_size == 1
    repeats = 1 if exact else repeats  # no noise: one pass is the number
    sched = make_schedule(schedule, schedule_eps)
    dev = torch.device(device) if device is not None else rows.device
    per_repeat, count = [], 0
    n_batches = math.ceil(rows.shape[0] / batch_size)
    with tqdm(total=repeats * n_batches, desc=desc, leave=False) as bar:
        for r in range(repeats):
            generator = torch.Generator(device=dev).manual_seed(seed + r)
            total, count = 0.0, 0
            for start in range(0, rows.shape[0], batch_size):
                x = rows[start:start + batch_size].to(dev)
                v = valid[start:start + batch_size].to(dev) if valid is not None else None
                with amp or contextlib.nullcontext():
                    s, n = block_diffusion_nll(model, x, block_size, sched, generator, valid_mask=v,
                                               sampling_eps=sampling_eps, ar_prefix=ar_prefix)
                total, count = total + float(s), count + int(n)
                bar.update(1)
            per_repeat.append(total / max(count, 1))
    mean = statistics.fmean(per_repeat)
    ppls = [math.exp(x) for x in per_repeat]
    spread = len(per_repeat) > 1
    return {"kind": "exact" if exact else "bound", "nll_per_token": mean,
            "nll_std": statistics.stdev(per_repeat) if spread else 0.0, "ppl": math.exp(mean),
            "ppl_std": statistics.stdev(ppls) if spread else 0.0, "repeats": per_repeat, "num_repeats": repeats,
            "tokens": count, "sequences": int(rows.shape[0]), "block_size": block_size,
            "settings": {"schedule": schedule, "schedule_eps": schedule_eps, "sampling_eps": sampling_eps,
                         "seed": seed, "batch_size": batch_size, "time_samples_per_block": 0 if exact else 1,
                         "measure": "next-token NLL of f(prefix) (exact)" if exact else "block NELBO (bound)"}}


# --------------------------------------------------------------------------------- generation

def generate_block_batch(model, system, setting, batch_size: int, length: int, generator: torch.Generator,
                         prompt: Optional[torch.Tensor] = None, eos_id: Optional[int] = None, progress: bool = False):
    """One batch for ``diffmamba.eval.sampling``: (tokens [B, P + length] including the prompt, nfe).

    ``setting.steps`` are per block (None = one per block token); fixed length (no EOS stop), as
    every system in the comparison generates the same number of tokens."""
    from diffmamba.block.sampler import block_sample
    from diffmamba.diffusion.sampler_base import SamplerOptions

    block_size = int(system.settings["block_size"])
    extra = {k: v for k, v in dict(setting.extra).items() if k in ("block_length", "eta", "top_k", "threshold")}
    options = SamplerOptions(steps=setting.steps or block_size, temperature=setting.temperature, top_p=setting.top_p,
                             progress=progress, progress_desc=f"{system.name} {setting.sampler}", **extra)
    canvas, fixed = _canvas(model, prompt, batch_size, length, generator.device)
    result = block_sample(model, canvas, fixed, block_size, sampler=setting.sampler, options=options,
                          generator=generator, ar_prefix=bool(system.settings.get("ar_prefix")))
    return result.tokens, result.nfe


def _canvas(model, prompt: Optional[torch.Tensor], batch_size: int, length: int, device):
    p = 0 if prompt is None else prompt.shape[1]
    canvas = torch.full((batch_size, p + length), model.mask_token_id, dtype=torch.long, device=device)
    fixed = torch.zeros_like(canvas, dtype=torch.bool)
    if prompt is not None:
        canvas[:, :p], fixed[:, :p] = prompt, True
    return canvas, fixed


# ----------------------------------------------------------------------- speed vs context length

def generation_calls(model, mode: str, block_size: Optional[int], context: torch.Tensor, length: int, sampler: str,
                     seed: int, amp=None, eos_id: int = 0):
    """(generate, prefill or None): callables generating ``length`` tokens after ``context`` [1, C]
    in ``mode`` ("ar", "diffusion" or "block" with ``block_size``), and the prompt prefill alone.
    Each returns the NFE (generate) or nothing (prefill); one denoising step per generated token."""
    from diffmamba.ar.decode import ar_generate
    from diffmamba.block.sampler import block_sample, prefill_cache
    from diffmamba.diffusion.sampler_base import SamplerOptions, denoiser_from_model
    from diffmamba.diffusion.samplers import run_sampler

    device = context.device
    generator = torch.Generator(device=device)
    scope = (lambda: amp()) if amp else contextlib.nullcontext
    if mode == "ar":
        start = context if context.shape[1] else torch.full((1, 1), eos_id, dtype=torch.long, device=device)

        def generate():
            generator.manual_seed(seed)
            with scope(), torch.no_grad():
                return ar_generate(model, start, length, generator).nfe

        def prefill():
            with scope(), torch.no_grad():
                state = None
                for piece in start.split(1024, dim=1):
                    _, state = model.prefill(piece, state=state)
        return generate, prefill
    canvas, fixed = _canvas(model, context if context.shape[1] else None, 1, length, device)
    if mode == "block":
        options = SamplerOptions(steps=block_size)  # one step per generated token, as below

        def generate():
            generator.manual_seed(seed)
            with scope():
                return block_sample(model, canvas, fixed, block_size, sampler=sampler, options=options,
                                    generator=generator).nfe

        full = context.shape[1] // block_size * block_size

        def prefill():
            with scope():
                prefill_cache(model, context[:, :full], block_size)
        return generate, (prefill if full else None)
    options = SamplerOptions(steps=length)

    def generate():
        generator.manual_seed(seed)
        with scope():
            return run_sampler(sampler, denoiser_from_model(model), canvas, fixed, model.mask_token_id, options,
                               generator).nfe
    return generate, None


def evaluate_context_speed(systems, ckpts: dict, *, contexts: Sequence[int], length: int, sampler: str = "ancestral",
                           warmup: int = 1, repeats: int = 3, seed: int = 0, device=None, amp=None) -> list[dict]:
    """Rows {system, mode, block_size, context, length, latency_s, prefill_s, decode_s, tokens_per_s,
    decode_tokens_per_s, decode_latency_per_token_s, nfe}: batch 1, random context ids (seeded),
    ``length`` new tokens, one denoising step per generated token for diffusion and block systems."""
    from tqdm.auto import tqdm

    from diffmamba.eval.speed import measure

    device = torch.device(device or "cpu")
    rows = []
    for system, context_length in tqdm([(s, c) for s in systems for c in contexts], desc="speed vs context",
                                       unit=" configs"):
        ck = ckpts[system.checkpoint]
        context = torch.randint(0, ck.tokenizer.vocab_size, (1, context_length),
                                generator=torch.Generator().manual_seed(seed)).to(device)
        generate, prefill = generation_calls(ck.model, system.mode, system.settings.get("block_size"), context, length,
                                             sampler, seed, amp, ck.tokenizer.eos_id)
        timing = measure(generate, device, warmup=warmup, repeats=repeats)
        prefill_s = measure(prefill, device, warmup=warmup, repeats=repeats).median_s if prefill else 0.0
        decode_s = max(timing.median_s - prefill_s, 1e-9)
        rows.append({"system": system.name, "mode": system.mode, "block_size": system.settings.get("block_size"),
                     "sampler": None if system.mode == "ar" else sampler, "context": context_length,
                     "length": length, "batch_size": 1, "nfe": float(timing.result), "latency_s": timing.median_s,
                     "prefill_s": prefill_s, "decode_s": decode_s, "tokens_per_s": length / timing.median_s,
                     "decode_tokens_per_s": length / decode_s, "decode_latency_per_token_s": decode_s / length,
                     "repeats": timing.repeats, "peak_mem_mib": timing.peak_mem_mib, "mem_label": timing.mem_label})
    return rows
