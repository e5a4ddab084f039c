"""The attention-layer analogue of the two-stream block-diffusion forward (``modules.two_stream``).

For a block ``A`` of ``layer_pattern`` the two streams share one SDPA call over the keys

    [ prefix (the cache: clean tokens before this sequence) ; clean x_0 (T) ; noisy x_t (T) ]

with the BD3-LM mask (block index b(i) = i // L'):

- clean query i  -> every prefix key; clean key j iff b(j) <= b(i)   (block-causal, like the Mamba
  clean stream: forward scan over everything before, reverse scan inside the block);
- noisy query i  -> every prefix key; clean key j iff b(j) < b(i); noisy key j iff b(j) == b(i)
  (the clean blocks before it, and its own noisy block bidirectionally).

Padding keys (``valid_mask`` False) are never attended; a padding query attends to itself too, so
no softmax row is empty. The layer's cache after the sequence is the prefix grown by the *clean*
keys and values, exactly what ``DiffMamba.forward(block, fwd_states=cache, return_fwd_states=True)``
appends block by block in the sampler, so the cached block sampler stays exact. Unlike a Mamba3State
it grows with the context: ``KVCache.nbytes``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from diffmamba.modules.attention import KVCache


def stream_mask(length: int, block_size: int, prefix: Optional[KVCache], valid: Optional[Tensor],
                clean_queries: bool, noisy_queries: bool, device) -> Tensor:
    """Bool mask [B or 1, 1, Q, prefix + T (+ T with noisy queries)]; Q = T per query stream."""
    block = torch.arange(length, device=device) // block_size
    before_or_same = (block[None, :] <= block[:, None])[None]  # [1, T, T]: [query, key]
    before = (block[None, :] < block[:, None])[None]
    same = (block[None, :] == block[:, None])[None]
    eye = torch.eye(length, dtype=torch.bool, device=device)[None]
    keys_valid = valid[:, None, :] if valid is not None else torch.ones(1, 1, length, dtype=torch.bool, device=device)
    rows = []
    if clean_queries:
        clean_keys = (before_or_same & keys_valid) | eye
        parts = [clean_keys] + ([torch.zeros_like(clean_keys)] if noisy_queries else [])
        rows.append(parts)
    if noisy_queries:
        rows.append([before & keys_valid, (same & keys_valid) | eye])
    batch = keys_valid.shape[0]
    body = torch.cat([torch.cat([p.expand(batch, -1, -1) for p in parts], dim=-1) for parts in rows], dim=1)
    prefix_len = 0 if prefix is None else prefix.length
    if prefix is not None and prefix.valid is not None:
        seen = prefix.valid[:, None, :].expand(-1, body.shape[1], -1)
    else:
        seen = torch.ones(1, body.shape[1], prefix_len, dtype=torch.bool, device=device)
    batch = max(batch, seen.shape[0])
    return torch.cat((seen.expand(batch, -1, -1), body.expand(batch, -1, -1)), dim=-1)[:, None]


def attention_streams(block, clean: Tensor, noisy: Optional[Tensor], prefix: Optional[KVCache], block_size: int,
                      valid_mask: Optional[Tensor], *, clean_out: bool, noisy_out: bool):
    """One attention ``ResidualBlock`` of the two-stream forward.

    clean: [B, T, D] clean-stream hidden; noisy: [B, T, D] or None; prefix: the layer's cache or None.
    clean_out / noisy_out: which streams' outputs are needed (the last layer needs at most one).
    Returns (clean hidden after the block, or the input unchanged when not ``clean_out``; noisy
    hidden after the block or None; the cache grown by the clean keys and values).
    """
    mixer = block.mixer
    offset = 0 if prefix is None else prefix.length
    q_clean, k_clean, v_clean = mixer.project(block.mixer_norm(clean), offset)
    base = prefix if prefix is not None else mixer.init_state(clean.shape[0], clean.device, k_clean.dtype)
    cache = base.append(k_clean, v_clean, valid_mask)
    noisy_out = noisy_out and noisy is not None
    if not (clean_out or noisy_out):
        return clean, None, cache
    queries, keys, values = [], [cache.k.to(k_clean.dtype)], [cache.v.to(v_clean.dtype)]
    if clean_out:
        queries.append(q_clean)
    if noisy_out:
        q_noisy, k_noisy, v_noisy = mixer.project(block.mixer_norm(noisy), offset)
        queries.append(q_noisy)
        keys.append(k_noisy)
        values.append(v_noisy)
    mask = stream_mask(clean.shape[1], block_size, prefix if offset else None, valid_mask, clean_out, noisy_out,
                       clean.device)
    mixed = mixer.attend(torch.cat(queries, dim=2), torch.cat(keys, dim=2), torch.cat(values, dim=2), mask)
    mixed = mixed.split(clean.shape[1], dim=1)
    outputs = []
    for x, m in zip(([clean] if clean_out else []) + ([noisy] if noisy_out else []), mixed):
        x = x + m  # the residual adds of ResidualBlock.forward, around this block's mixer and MLP
        outputs.append(x + block.mlp(block.mlp_norm(x)))
    clean_after = outputs[0] if clean_out else clean
    noisy_after = outputs[-1] if noisy_out else None
    return clean_after, noisy_after, cache
