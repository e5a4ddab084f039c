"""Produce samples from a system, the same way for quality and for speed measurements.

- AR (``mode="ar"``): ``diffmamba.ar.ar_generate``: one chunked prefill over the prompt, then one
  recurrent ``model.step`` per token. Unconditional samples start from a single EOS (the document
  separator). Exactly ``length`` new tokens (no early stop at EOS), so every system produces the
  same number of tokens. NFE = prefill calls + steps.
- Diffusion (``mode="diffusion"``): a sampler from ``diffmamba.diffusion.samplers`` on a canvas of
  ``length`` masks (after the prompt, which is fixed). NFE = network calls the sampler actually made
  (the ancestral cache skips calls when nothing changes).

All randomness comes from one generator seeded per (setting, batch); top-p and temperature apply to
the clean-token distribution in float64 in both modes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from diffmamba.eval.systems import System


@dataclass(frozen=True)
class GenSetting:
    """One way of generating: the sampler (``"ar"`` for AR decoding) and its knobs."""

    sampler: str  # "ar" | a diffusion sampler name
    steps: Optional[int] = None  # diffusion steps (None for AR and first-hitting)
    top_p: float = 1.0
    temperature: float = 1.0
    extra: tuple = ()  # sorted (key, value) pairs of further sampler options (e.g. block_length, eta)

    def as_dict(self) -> dict:
        return {"sampler": self.sampler, "steps": self.steps, "top_p": self.top_p, "temperature": self.temperature,
                **dict(self.extra)}


@dataclass
class Generated:
    tokens: list  # per sample: generated ids (prompt excluded)
    nfe: list = field(default_factory=list)  # per batch: network calls


def settings_for(system: System, samplers: list[str], steps: list[int], top_ps: list[float],
                 temperature: float) -> list[GenSetting]:
    """The settings to evaluate for ``system``: AR decoding once per top-p; diffusion every sampler x
    steps (first-hitting, whose NFE is the length, once) per top-p. Block diffusion systems can pass
    their own settings."""
    from diffmamba.eval.decoding import split_sampler

    extra = tuple(sorted(system.settings.items()))
    out = []
    for p in top_ps:
        if system.is_ar or system.mode == "speculative":
            out.append(GenSetting(system.mode, None, p, temperature, extra))
            continue
        for spec in samplers:
            s, knobs = split_sampler(spec)  # "parallel:0.9" -> ("parallel", {"threshold": 0.9})
            for n in ([None] if s in ("first-hitting", "parallel") else steps):
                out.append(GenSetting(s, n, p, temperature, tuple(sorted({**dict(extra), **knobs}.items()))))
    return out


def generate_batch(model, system: System, setting: GenSetting, batch_size: int, length: int,
                   generator: torch.Generator, prompt: Optional[torch.Tensor] = None,
                   eos_id: Optional[int] = None, progress: bool = False):
    """One batch: returns (tokens [B, P + length] including the prompt, nfe)."""
    if system.mode == "block":  # block diffusion (diffmamba/block/evaluation.py)
        from diffmamba.block.evaluation import generate_block_batch
        return generate_block_batch(model, system, setting, batch_size, length, generator, prompt, eos_id, progress)
    device = generator.device
    if system.mode == "speculative":  # diffmamba/eval/decoding.py
        from diffmamba.eval.decoding import generate_speculative_batch
        return generate_speculative_batch(model, system, setting, batch_size, length, generator, prompt, eos_id)
    if system.is_ar:
        from diffmamba.ar import ar_generate
        start = prompt if prompt is not None else torch.full((batch_size, 1), eos_id, dtype=torch.long, device=device)
        res = ar_generate(model, start, length, generator, temperature=setting.temperature, top_p=setting.top_p,
                          progress=progress)
        return (res.tokens if prompt is not None else res.tokens[:, 1:]), res.nfe
    from diffmamba.diffusion import SamplerOptions, denoiser_from_model, run_sampler
    opts = dict(setting.extra)
    options = SamplerOptions(steps=setting.steps or length, temperature=setting.temperature, top_p=setting.top_p,
                             progress=progress, progress_desc=f"{setting.sampler} x{setting.steps}",
                             **{k: v for k, v in opts.items() if k in ("block_length", "eta", "top_k", "threshold")})
    P = 0 if prompt is None else prompt.shape[1]
    canvas = torch.full((batch_size, P + length), model.mask_token_id, dtype=torch.long, device=device)
    fixed = torch.zeros_like(canvas, dtype=torch.bool)
    if prompt is not None:
        canvas[:, :P] = prompt
        fixed[:, :P] = True
    res = run_sampler(setting.sampler, denoiser_from_model(model), canvas, fixed if P else None,
                      model.mask_token_id, options, generator)
    return res.tokens, res.nfe


def generate(model, system: System, setting: GenSetting, num_samples: int, length: int, batch_size: int,
             seed: int, device, prompts: Optional[torch.Tensor] = None, eos_id: Optional[int] = None,
             amp: Optional[Callable] = None, bar=None) -> Generated:
    """``num_samples`` samples of ``length`` new tokens (continuations of ``prompts`` [N, P] when given)."""
    import contextlib
    out = Generated(tokens=[])
    for b, start in enumerate(range(0, num_samples, batch_size)):
        n = min(batch_size, num_samples - start)
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b)
        prompt = prompts[start:start + n].to(device) if prompts is not None else None
        with amp() if amp else contextlib.nullcontext():
            tokens, nfe = generate_batch(model, system, setting, n, length, gen, prompt, eos_id)
        P = 0 if prompt is None else prompt.shape[1]
        out.tokens += [row[P:].tolist() for row in tokens.cpu()]
        out.nfe.append(nfe)
        if bar is not None:
            bar.update(n)
    return out
