"""Block-diffusion sampling with an exact, constant-size per-layer state cache (docs/block-diffusion.md §3).

    result = block_sample(model, canvas, fixed, block_size=16, sampler="ancestral",
                          options=SamplerOptions(steps=16), generator=g, eos_id=eos)

For blocks b = 0, 1, ... of the canvas (length L' each):

1. **Cache.** One Mamba3State per layer: the clean stream's forward state after the committed
   blocks. The leading blocks that are fixed in every row (a prompt's full blocks) fill it by a
   chunked prefill (``block_streams`` over ``prefill_chunk`` tokens at a time).
2. **Denoise.** Any registered sampler (``diffmamba.sampling.registry``) runs inside the block
   through ``denoise(x [B, L']) = model(x, fwd_states=cache)``: all layers on the L' tokens only,
   forward scans from the cache, reverse scans block-local. Fixed tokens in the block (e.g. the
   partial last block of a prompt) stay fixed.
3. **Commit.** One clean pass over the sampled block, forward from the cache, returns the new
   per-layer states.

Each network call after the prefill processes B x L' tokens plus the fixed-size cache, whatever
the context length: per-block cost and memory do not grow with the context. ``use_cache=False``
is the honest baseline and the exactness oracle: before every block it recomputes the states from
the whole committed prefix (cost linear in the context), and gives the same tokens under a seed.

Variable length (docs/masked-diffusion.md §2.4): with ``eos_id``, a row stops at its first generated
EOS (positions after it become EOS); sampling stops once every row has stopped.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor

from diffmamba.core.errors import UserError
from diffmamba.modules.two_stream import block_streams
from diffmamba.ops import Mamba3State
from diffmamba.sampling.base import SampleResult, SamplerOptions, prepare_canvas, progress_bar
from diffmamba.sampling.canvas import leading_fixed
from diffmamba.sampling.graphs import GraphedDenoiser
from diffmamba.sampling.registry import get_sampler

Cache = Optional[list[Mamba3State]]  # per-layer forward states; None = empty prefix


def prefill_cache(model, tokens: Tensor, block_size: int, cache: Cache = None,
                  chunk_tokens: int = 1024, ar_prefix: bool = False) -> tuple[Cache, int]:
    """The cache after the clean blocks ``tokens`` [B, n L'], continuing ``cache``; and the number
    of network calls made.

    Runs the clean stream (forward from the cache, block-local reverse) over ``chunk_tokens``
    (rounded down to whole blocks, at least one) at a time, so memory stays bounded for long prompts.
    ``ar_prefix``: the cache is the AR-mode state instead (dual checkpoints, ``objectives.dual``).
    """
    if tokens.shape[1] % block_size:
        raise ValueError(f"prefill needs whole blocks: {tokens.shape[1]} tokens, block size {block_size}")
    chunk = max(block_size, chunk_tokens // block_size * block_size)
    pieces = tokens.split(chunk, dim=1)
    with torch.no_grad():
        for piece in pieces:
            if ar_prefix:
                cache = commit_block(model, piece, cache, ar_prefix=True)
                continue
            _, cache = block_streams(model, piece, block_size, initial_states=cache, return_output=False,
                                     return_final_states=True)
    return cache, len(pieces)


def block_denoiser(model, cache: Cache):
    """``denoise(x [B, L']) -> logits [B, L', V + 1]``: the noisy block given the cached prefix."""

    def denoise(x: Tensor) -> Tensor:
        with torch.no_grad():
            return model(x, mode="diffusion", fwd_states=cache)

    return denoise


def commit_block(model, block: Tensor, cache: Cache, ar_prefix: bool = False) -> Cache:
    """Advance the cache over one clean block [B, L'] (the head is skipped: only states are needed);
    with ``ar_prefix`` by an AR-mode pass (dual checkpoints: their denoiser reads AR states)."""
    with torch.no_grad():
        _, cache = model(block, mode="ar" if ar_prefix else "diffusion", fwd_states=cache, return_fwd_states=True,
                         return_hidden=True)
    return cache


def check_context(model, prompt_length: int) -> None:
    """A prompt longer than the model's context (``max_seq_len``) is a user error."""
    context = int(model.config.max_seq_len)
    if prompt_length > context:
        raise UserError(f"the prompt has {prompt_length} tokens, more than the model's context of {context} "
                        f"(model.max_seq_len); keep the last {context} tokens or shorten the prompt")


def _stop_after_eos(x: Tensor, generated: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """x with every generated position after a row's first generated EOS set to EOS, and [B] bool:
    the rows that have one. x, generated: [B, T]."""
    is_eos = (x == eos_id) & generated
    after_first = is_eos.long().cumsum(dim=1) - is_eos.long() > 0
    return torch.where(after_first & generated, torch.full_like(x, eos_id), x), is_eos.any(dim=1)


@torch.no_grad()
def block_sample(
    model, canvas: Tensor, fixed: Optional[Tensor], block_size: int, *, sampler: str = "ancestral",
    options: SamplerOptions = SamplerOptions(), generator: Optional[torch.Generator] = None,
    eos_id: Optional[int] = None, use_cache: bool = True, prefill_chunk: int = 1024, ar_prefix: bool = False,
    cuda_graph: bool = False,
) -> SampleResult:
    """Generate the non-fixed positions of ``canvas`` block by block.

    Args:
        model: a ``DiffMamba`` (``model(x, fwd_states=..., return_fwd_states=...)`` and
            ``block_streams``), ideally trained with ``objective.name: block_diffusion``.
        canvas: [B, T] ids; ``fixed`` [B, T] bool marks the given ones (None = unconditional).
            T need not be a multiple of ``block_size``: the last block is sampled whole and cut.
        sampler: a registered sampler name, run inside each block with ``options`` (steps per block).
        generator: all randomness (on the model's device).
        eos_id: stop each row at its first generated EOS (None = fixed length).
        use_cache: False recomputes the prefix states before every block (baseline / oracle).
        prefill_chunk: tokens per prefill call.
        ar_prefix: the cache holds AR-mode states (a ``dual`` checkpoint's conditioning) instead of
            the block-diffusion clean stream's.
        cuda_graph: replay the denoiser from a CUDA graph (``diffmamba.sampling.graphs``; CUDA,
            Mamba-3 layers only), captured at the first block with a non-empty prefix.

    Returns:
        SampleResult(tokens [B, T] with no mask, nfe = network calls (prefill chunks, denoiser calls
        and commits), steps = sampler steps summed over blocks).
    """
    if block_size < 1:
        raise UserError(f"block size must be >= 1, got {block_size}")
    run = get_sampler(sampler)
    mask_id = model.mask_token_id
    x, fixed = prepare_canvas(canvas, fixed, mask_id)
    batch, length = x.shape
    prompt_length = leading_fixed(fixed)
    check_context(model, prompt_length)
    num_blocks = -(-length // block_size)
    pad = num_blocks * block_size - length
    if pad:  # generate the last block whole, then cut it (the model was trained on whole blocks)
        x = torch.cat((x, x.new_full((batch, pad), mask_id)), dim=1)
        fixed = torch.cat((fixed, fixed.new_zeros(batch, pad)), dim=1)
    inner = dataclasses.replace(options, progress=False)  # one bar, over blocks
    prefix_blocks = prompt_length // block_size
    nfe, steps = 0, 0
    cache: Cache = None
    if use_cache and prefix_blocks:
        cache, calls = prefill_cache(model, x[:, : prefix_blocks * block_size], block_size,
                                     chunk_tokens=prefill_chunk, ar_prefix=ar_prefix)
        nfe += calls
    stopped = torch.zeros(batch, dtype=torch.bool, device=x.device)
    graphed = None
    with progress_bar(num_blocks - prefix_blocks, options) as bar:
        for b in range(prefix_blocks, num_blocks):
            span = slice(b * block_size, (b + 1) * block_size)
            if not use_cache and b:
                cache, calls = prefill_cache(model, x[:, : b * block_size], block_size, chunk_tokens=prefill_chunk,
                                             ar_prefix=ar_prefix)
                nfe += calls
            if not fixed[:, span].all():
                if cuda_graph and cache is not None and graphed is None:
                    graphed = GraphedDenoiser.reused(model, cache, block_size)
                denoise = graphed.bind(cache) if graphed is not None else block_denoiser(model, cache)
                result = run(denoise, x[:, span], fixed[:, span], mask_id, inner, generator)
                x[:, span] = result.tokens
                nfe, steps = nfe + result.nfe, steps + result.steps
            if eos_id is not None:
                x, stopped = _stop_after_eos(x, ~fixed, eos_id)
            bar.update(1)
            if b == num_blocks - 1 or bool(stopped.all()):
                break
            if use_cache:
                cache = commit_block(model, x[:, span], cache, ar_prefix=ar_prefix)
                nfe += 1
    return SampleResult(x[:, :length], nfe, steps)
