"""One entry for every decoding mode: ``generate(model, mode, canvas, fixed, options, generator)``.

| mode | what runs | ``options.steps`` |
|---|---|---|
| ``ar`` | ``sampling.ar``: one chunked prefill over the prompt, then one recurrent step per token | unused |
| ``diffusion`` | a registered sampler over the whole canvas (``sampling.registry``); ``options.cuda_graph`` replays the denoiser from a CUDA graph | over the canvas |
| ``block`` | block diffusion (``sampling.bd3lm``): the sampler inside each block of ``block_size``, with the per-layer state cache (``ar_prefix``: AR-mode states, dual checkpoints) | per block |
| ``speculative`` | ``sampling.speculative``: the block denoiser drafts ``draft_len`` tokens from the AR state, one AR scan verifies (dual checkpoints; AR's exact distribution) | unused |

The canvas is [B, L] ids with ``fixed`` [B, L] marking the given tokens (``canvas.prompt_canvas``
builds one from a prompt; ``canvas.Canvas.batch`` from a parsed text pattern). AR decoding can only
continue a prefix; with no prompt it starts from ``start_id`` (EOS, the document separator the model
saw in training), which is not part of the output; so does speculative decoding. Every mode returns
a ``SampleResult`` whose tokens have the canvas's shape (AR rows stopped at ``stop_id`` are padded with it).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor

from diffmamba.core.errors import UserError
from diffmamba.sampling.ar import ar_generate
from diffmamba.sampling.base import SampleResult, SamplerOptions, denoiser_from_model
from diffmamba.sampling.bd3lm import block_sample
from diffmamba.sampling.canvas import leading_fixed
from diffmamba.sampling.graphs import GraphedDenoiser
from diffmamba.sampling.registry import run_sampler
from diffmamba.sampling.speculative import speculative_generate

MODES = ("diffusion", "ar", "block", "speculative")


def generate(model, mode: str, canvas: Tensor, fixed: Optional[Tensor], options: SamplerOptions,
             generator: torch.Generator, *, sampler: str = "ancestral", block_size: Optional[int] = None,
             start_id: Optional[int] = None, stop_id: Optional[int] = None, ar_prefix: bool = False,
             draft_len: Optional[int] = None, draft_steps: int = 1) -> SampleResult:
    """Fill the non-fixed positions of ``canvas`` [B, L] in ``mode`` (module table).

    sampler: the diffusion sampler (``diffusion`` and ``block``); block_size: L' (``block``);
    start_id: the token unconditional AR (and speculative) decoding starts from; stop_id: stop a row
    at its first generated ``stop_id`` (``ar``, ``block``, ``speculative``; None = fixed length); ar_prefix:
    ``block`` conditions on AR-mode prefix states; draft_len / draft_steps: ``speculative``'s k and
    denoiser calls per draft (its result is a ``SpeculativeResult`` with acceptance counts).
    """
    if fixed is None:
        fixed = torch.zeros_like(canvas, dtype=torch.bool)
    if mode == "diffusion":
        denoise = (GraphedDenoiser.reused(model, None, canvas.shape[1], canvas.shape[0]).bind()
                   if options.cuda_graph else denoiser_from_model(model))
        return run_sampler(sampler, denoise, canvas, fixed, model.mask_token_id, options, generator)
    if mode == "block":
        if block_size is None:
            raise ValueError("mode 'block' needs block_size")
        return block_sample(model, canvas, fixed, block_size, sampler=sampler, options=options, generator=generator,
                            eos_id=stop_id, ar_prefix=ar_prefix, cuda_graph=options.cuda_graph)
    if mode == "ar":
        return _ar(model, canvas, fixed, options, generator, start_id, stop_id)
    if mode == "speculative":
        if draft_len is None:
            raise ValueError("mode 'speculative' needs draft_len")
        start, given = _prefix(canvas, fixed, start_id, mode)
        result = speculative_generate(model, start, canvas.shape[1] - given, generator, draft_len=draft_len,
                                      draft_steps=draft_steps, temperature=options.temperature, top_k=options.top_k,
                                      top_p=options.top_p, eos_id=stop_id, progress=options.progress,
                                      progress_desc=options.progress_desc, cuda_graph=options.cuda_graph)
        return dataclasses.replace(result, tokens=result.tokens if given else result.tokens[:, 1:])
    raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def _prefix(canvas: Tensor, fixed: Tensor, start_id: Optional[int], mode: str) -> tuple[Tensor, int]:
    """(the tokens left-to-right decoding starts from [B, >= 1], how many of them are the canvas's):
    the fixed prefix, or ``start_id`` alone when nothing is given. Only a prefix can be continued."""
    given = leading_fixed(fixed)
    if fixed[:, given:].any():
        raise UserError(f"--mode {mode} can only continue a prefix; for [MASK:n] spans or --infill use "
                        "--mode diffusion")
    if given:
        return canvas[:, :given], given
    if start_id is None:
        raise ValueError(f"unconditional {mode} decoding needs start_id (e.g. the EOS id)")
    return torch.full((canvas.shape[0], 1), start_id, dtype=torch.long, device=canvas.device), 0


def _ar(model, canvas: Tensor, fixed: Tensor, options: SamplerOptions, generator: torch.Generator,
        start_id: Optional[int], stop_id: Optional[int]) -> SampleResult:
    batch, length = canvas.shape
    start, given = _prefix(canvas, fixed, start_id, "ar")
    result = ar_generate(model, start, length - given, generator, temperature=options.temperature,
                         top_k=options.top_k, top_p=options.top_p, eos_id=stop_id, progress=options.progress,
                         progress_desc=options.progress_desc, cuda_graph=options.cuda_graph)
    tokens = result.tokens if given else result.tokens[:, 1:]
    if tokens.shape[1] < length:  # stopped at stop_id: pad with it to the canvas length
        pad = torch.full((batch, length - tokens.shape[1]), stop_id, dtype=torch.long, device=tokens.device)
        tokens = torch.cat([tokens, pad], 1)
    return SampleResult(tokens, result.nfe, result.steps)
