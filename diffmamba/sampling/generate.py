"""One entry for every decoding mode: ``generate(model, mode, canvas, fixed, options, generator)``.

| mode | what runs | ``options.steps`` |
|---|---|---|
| ``ar`` | ``sampling.ar``: one chunked prefill over the prompt, then one recurrent step per token | unused |
| ``diffusion`` | a registered sampler over the whole canvas (``sampling.registry``) | over the canvas |
| ``block`` | block diffusion (``sampling.bd3lm``): the sampler inside each block of ``block_size``, with the per-layer state cache | per block |

The canvas is [B, L] ids with ``fixed`` [B, L] marking the given tokens (``canvas.prompt_canvas``
builds one from a prompt; ``canvas.Canvas.batch`` from a parsed text pattern). AR decoding can only
continue a prefix; with no prompt it starts from ``start_id`` (EOS, the document separator the model
saw in training), which is not part of the output. Every mode returns a ``SampleResult`` whose
tokens have the canvas's shape (AR rows stopped at ``stop_id`` are padded with it).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from diffmamba.core.errors import UserError
from diffmamba.sampling.ar import ar_generate
from diffmamba.sampling.base import SampleResult, SamplerOptions, denoiser_from_model
from diffmamba.sampling.bd3lm import block_sample
from diffmamba.sampling.canvas import leading_fixed
from diffmamba.sampling.registry import run_sampler

MODES = ("diffusion", "ar", "block")


def generate(model, mode: str, canvas: Tensor, fixed: Optional[Tensor], options: SamplerOptions,
             generator: torch.Generator, *, sampler: str = "ancestral", block_size: Optional[int] = None,
             start_id: Optional[int] = None, stop_id: Optional[int] = None) -> SampleResult:
    """Fill the non-fixed positions of ``canvas`` [B, L] in ``mode`` (module table).

    sampler: the diffusion sampler (``diffusion`` and ``block``); block_size: L' (``block``);
    start_id: the token unconditional AR decoding starts from; stop_id: stop a row at its first
    generated ``stop_id`` (``ar`` and ``block``; None = fixed length).
    """
    if fixed is None:
        fixed = torch.zeros_like(canvas, dtype=torch.bool)
    if mode == "diffusion":
        return run_sampler(sampler, denoiser_from_model(model), canvas, fixed, model.mask_token_id, options,
                           generator)
    if mode == "block":
        if block_size is None:
            raise ValueError("mode 'block' needs block_size")
        return block_sample(model, canvas, fixed, block_size, sampler=sampler, options=options, generator=generator,
                            eos_id=stop_id)
    if mode == "ar":
        return _ar(model, canvas, fixed, options, generator, start_id, stop_id)
    raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def _ar(model, canvas: Tensor, fixed: Tensor, options: SamplerOptions, generator: torch.Generator,
        start_id: Optional[int], stop_id: Optional[int]) -> SampleResult:
    batch, length = canvas.shape
    given = leading_fixed(fixed)
    if fixed[:, given:].any():
        raise UserError("--mode ar can only continue a prefix; for [MASK:n] spans or --infill use --mode diffusion")
    if given:
        start = canvas[:, :given]
    elif start_id is None:
        raise ValueError("unconditional AR decoding needs start_id (e.g. the EOS id)")
    else:
        start = torch.full((batch, 1), start_id, dtype=torch.long, device=canvas.device)
    result = ar_generate(model, start, length - given, generator, temperature=options.temperature,
                         top_k=options.top_k, top_p=options.top_p, eos_id=stop_id, progress=options.progress,
                         progress_desc=options.progress_desc)
    tokens = result.tokens if given else result.tokens[:, 1:]
    if tokens.shape[1] < length:  # stopped at stop_id: pad with it to the canvas length
        pad = torch.full((batch, length - tokens.shape[1]), stop_id, dtype=torch.long, device=tokens.device)
        tokens = torch.cat([tokens, pad], 1)
    return SampleResult(tokens, result.nfe, result.steps)
