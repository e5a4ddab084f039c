"""Block diffusion in the comparison report: the L' dial next to AR decoding and full diffusion.

Hooks used by ``diffmamba.eval`` (systems of ``mode="block"``, settings ``{"block_size": L'}``):

- ``eval_options.block_systems``: systems from ``--block CKPT`` (L' from each run config, or
  ``--block-sizes``).
- ``block_likelihood``: the block NELBO on the validation rows (same dict as the diffusion bound;
  L' = 1 is exact, ``kind="exact"``).
- samples for quality and speed rows: ``diffmamba.eval.sampling`` (``mode="block"``, steps per block).
- ``evaluate_context_speed``: tokens/s and latency of generating ``length`` tokens after contexts
  of growing length, for every system: the cached block sampler (flat per block), full-sequence
  diffusion (every step re-reads the context) and AR decoding (constant per token); prompt
  prefill time is reported apart.
- ``report.dial_section`` / ``report.plot_dial``: the report's "L' dial" table and plot.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from diffmamba.core.errors import UserError
from diffmamba.eval.likelihood import repeated_bound
from diffmamba.eval.speed import measure
from diffmamba.objectives.bd3lm import block_diffusion_nll
from diffmamba.objectives.schedule import make_schedule
from diffmamba.sampling.base import SamplerOptions
from diffmamba.sampling.bd3lm import prefill_cache
from diffmamba.sampling.canvas import prompt_canvas
from diffmamba.sampling.generate import generate as generate_tokens


# --------------------------------------------------------------------------------- likelihood

def block_likelihood(model, rows: torch.Tensor, valid: Optional[torch.Tensor], *, block_size: int,
                     schedule: str = "loglinear", schedule_eps: float = 1e-3, sampling_eps: float = 1e-3,
                     repeats: int = 3, seed: int = 0, batch_size: int = 8, device=None, amp=None,
                     desc: str = "block NELBO", ar_prefix: bool = False) -> dict:
    """Block NELBO over all rows (the same dict as ``diffusion_likelihood``); exact when L' = 1.

    ``ar_prefix``: blocks conditioned on AR-mode prefix states (a dual checkpoint).
    Raises UserError when ``block_size`` does not divide the row length, naming the divisors."""


    length = rows.shape[1]
    if length % block_size:
        divisors = [d for d in range(1, length + 1) if length % d == 0]
        raise UserError(f"block size {block_size} does not divide the validation row length {length}; pick one of "
                        f"{', '.join(map(str, divisors[:12]))} or pass --seq-len a multiple of {block_size}")
    exact = block_size == 1
    repeats = 1 if exact else repeats  # no noise: one pass is the number
    sched = make_schedule(schedule, schedule_eps)

    def score(x, v, generator):
        return block_diffusion_nll(model, x, block_size, sched, generator, valid_mask=v, sampling_eps=sampling_eps,
                                   ar_prefix=ar_prefix)

    result = repeated_bound(score, rows, valid, repeats=repeats, seed=seed, batch_size=batch_size, device=device,
                            amp=amp, desc=desc)
    return {"kind": "exact" if exact else "bound", **result, "block_size": block_size,
            "settings": {"schedule": schedule, "schedule_eps": schedule_eps, "sampling_eps": sampling_eps,
                         "seed": seed, "batch_size": batch_size, "time_samples_per_block": 0 if exact else 1,
                         "measure": "next-token NLL of f(prefix) (exact)" if exact else "block NELBO (bound)"}}


# ----------------------------------------------------------------------- speed vs context length

def generation_calls(model, mode: str, block_size: Optional[int], context: torch.Tensor, length: int, sampler: str,
                     seed: int, amp=None, eos_id: int = 0):
    """(generate, prefill or None): callables generating ``length`` tokens after ``context`` [1, C]
    in ``mode`` ("ar", "diffusion" or "block" with ``block_size``), and the prompt prefill alone.
    Each returns the NFE (generate) or nothing (prefill); one denoising step per generated token."""
    device = context.device
    generator = torch.Generator(device=device)
    scope = (lambda: amp()) if amp else contextlib.nullcontext
    canvas, fixed = prompt_canvas(model.mask_token_id, 1, length, device, context if context.shape[1] else None)
    options = SamplerOptions(steps=block_size if mode == "block" else length)  # one step per generated token

    def generate():
        generator.manual_seed(seed)
        with scope(), torch.no_grad():
            return generate_tokens(model, mode, canvas, fixed, options, generator, sampler=sampler,
                                   block_size=block_size, start_id=eos_id).nfe

    if mode == "ar":
        start = context if context.shape[1] else torch.full((1, 1), eos_id, dtype=torch.long, device=device)

        def prefill():
            with scope(), torch.no_grad():
                state = None
                for piece in start.split(1024, dim=1):
                    _, state = model.prefill(piece, state=state)
        return generate, prefill
    if mode == "block":
        full = context.shape[1] // block_size * block_size

        def prefill():
            with scope():
                prefill_cache(model, context[:, :full], block_size)
        return generate, (prefill if full else None)
    return generate, None


def evaluate_context_speed(systems, ckpts: dict, *, contexts: Sequence[int], length: int, sampler: str = "ancestral",
                           warmup: int = 1, repeats: int = 3, seed: int = 0, device=None, amp=None) -> list[dict]:
    """Rows {system, mode, block_size, context, length, latency_s, prefill_s, decode_s, tokens_per_s,
    decode_tokens_per_s, decode_latency_per_token_s, nfe}: batch 1, random context ids (seeded),
    ``length`` new tokens, one denoising step per generated token for diffusion and block systems."""


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
