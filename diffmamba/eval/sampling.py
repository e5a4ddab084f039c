"""Produce samples from a system, the same way for quality and for speed measurements
(``diffmamba.sampling.generate`` runs the mode; this module turns settings into its options).

- AR (``mode="ar"``): ``diffmamba.sampling.ar.ar_generate``: one chunked prefill over the prompt, then one
  recurrent ``model.step`` per token. Unconditional samples start from a single EOS (the document
  separator). Exactly ``length`` new tokens (no early stop at EOS), so every system produces the
  same number of tokens. NFE = prefill calls + steps.
- Diffusion (``mode="diffusion"``): a sampler from ``diffmamba.sampling.registry`` on a canvas of
  ``length`` masks (after the prompt, which is fixed). NFE = network calls the sampler actually made
  (the ancestral cache skips calls when nothing changes).
- Block diffusion (``mode="block"``, settings ``{"block_size": L'}``): the sampler inside each block
  with the state cache; steps are per block (default: one per block token). ``"ar_prefix": True``
  (a dual checkpoint): the cache holds AR-mode states.
- Speculative (``mode="speculative"``, settings ``{"draft_len": k, "draft_steps": s}``, a dual
  checkpoint): the block denoiser drafts, AR mode verifies; AR's exact distribution, started as AR
  is. NFE counts draft and verification calls (one verification per round: no rescans).

All randomness comes from one generator seeded per (setting, batch); top-p and temperature apply to
the clean-token distribution in float64 in both modes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from diffmamba.eval.decoding import split_sampler
from diffmamba.eval.systems import System
from diffmamba.sampling.base import SamplerOptions
from diffmamba.sampling.canvas import prompt_canvas
from diffmamba.sampling.generate import generate as generate_tokens
from diffmamba.sampling.registry import UNSTEPPED
from diffmamba.sampling.speculative import SpeculativeResult


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
    """The settings to evaluate for ``system``: AR (and speculative) decoding once per top-p; diffusion
    every sampler x steps (first-hitting and parallel, which ignore steps, once) per top-p; a sampler
    spec ``parallel:C`` is the parallel sampler at threshold C. Block diffusion systems can pass
    their own settings."""
    extra = tuple(sorted(system.settings.items()))
    out = []
    for p in top_ps:
        if system.is_ar or system.mode == "speculative":
            out.append(GenSetting(system.mode, None, p, temperature, extra))
            continue
        for spec in samplers:
            s, knobs = split_sampler(spec)  # "parallel:0.9" -> ("parallel", {"threshold": 0.9})
            for n in ([None] if s in UNSTEPPED else steps):
                out.append(GenSetting(s, n, p, temperature, tuple(sorted({**dict(extra), **knobs}.items()))))
    return out


def generate_batch(model, system: System, setting: GenSetting, batch_size: int, length: int,
                   generator: torch.Generator, prompt: Optional[torch.Tensor] = None,
                   eos_id: Optional[int] = None, progress: bool = False, cuda_graph: bool = False):
    """One batch: returns (tokens [B, P + length] including the prompt, nfe, stats). Block diffusion
    steps are per block (None = one per block token); every mode generates exactly ``length`` tokens.
    stats: speculative decoding's acceptance (``acceptance``, ``tokens_per_round``,
    ``acceptance_by_position``), else empty.
    ``cuda_graph``: replay the mode's network calls from CUDA graphs (same tokens; the caller decides
    where they work, ``diffmamba.sampling.graphs.resolve_cuda_graph``)."""
    block_size = system.settings.get("block_size")
    block_size = None if block_size is None else int(block_size)
    default_steps = block_size if system.mode == "block" else length
    extra = {k: v for k, v in dict(setting.extra).items() if k in ("block_length", "eta", "top_k", "threshold")}
    desc = f"{system.name} {setting.sampler}" if system.mode == "block" else f"{setting.sampler} x{setting.steps}"
    options = SamplerOptions(steps=setting.steps or default_steps, temperature=setting.temperature,
                             top_p=setting.top_p, progress=progress, progress_desc=desc,
                             cuda_graph=cuda_graph, **extra)
    canvas, fixed = prompt_canvas(model.mask_token_id, batch_size, length, generator.device, prompt)
    settings = system.settings
    result = generate_tokens(model, system.mode, canvas, fixed, options, generator, sampler=setting.sampler,
                             block_size=block_size, start_id=eos_id, ar_prefix=bool(settings.get("ar_prefix")),
                             draft_len=settings.get("draft_len"), draft_steps=int(settings.get("draft_steps", 1)))
    stats = {}
    if isinstance(result, SpeculativeResult):
        stats = {"acceptance": result.acceptance_rate, "tokens_per_round": result.tokens_per_round,
                 "acceptance_by_position": result.acceptance_by_position}
    return result.tokens, result.nfe, stats


def generate(model, system: System, setting: GenSetting, num_samples: int, length: int, batch_size: int,
             seed: int, device, prompts: Optional[torch.Tensor] = None, eos_id: Optional[int] = None,
             amp: Optional[Callable] = None, bar=None) -> Generated:
    """``num_samples`` samples of ``length`` new tokens (continuations of ``prompts`` [N, P] when given)."""
    out = Generated(tokens=[])
    for b, start in enumerate(range(0, num_samples, batch_size)):
        n = min(batch_size, num_samples - start)
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b)
        prompt = prompts[start:start + n].to(device) if prompts is not None else None
        with amp() if amp else contextlib.nullcontext():
            tokens, nfe, _ = generate_batch(model, system, setting, n, length, gen, prompt, eos_id)
        P = 0 if prompt is None else prompt.shape[1]
        out.tokens += [row[P:].tolist() for row in tokens.cpu()]
        out.nfe.append(nfe)
        if bar is not None:
            bar.update(n)
    return out
