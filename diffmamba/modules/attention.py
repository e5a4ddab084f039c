"""The attention mixer of hybrid and Transformer trunks (``model.layer_pattern`` letter ``A``).

Multi-head attention with optional grouped key/value heads and rotary positions, computed by
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU, the
math kernel on CPU). It has the call signature of ``BiMixer`` so a ``ResidualBlock`` holds either:

- diffusion mode (``causal=False``): every token attends to every token (bidirectional);
- AR mode (``causal=True``): token i attends to tokens <= i;
- ``valid_mask`` [B, T] (False at right padding): padding keys are never attended by a real token
  (each padding query still attends to itself, so no row of the softmax is empty and nothing
  becomes NaN; its output is ignored downstream, as for the Mamba mixer);
- the per-layer "state" is a ``KVCache``: the rotated keys and values of every token seen so far.
  ``fwd_initial_state`` is the prefix the new tokens attend to in full (AR prefill/step, and the
  block sampler's clean prefix); ``return_fwd_state`` returns that cache grown by the new tokens.
  Unlike a Mamba3State it grows linearly with the context (``KVCache.nbytes``).

Positions are absolute: the new tokens sit at ``cache.length + arange(T)``. No time conditioning,
like the Mamba trunk: the mask pattern carries the noise level.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffmamba.config import ModelConfig


@dataclass
class KVCache:
    """Keys (rotary applied) and values of the tokens seen so far by one attention layer.

    k, v: [B, kv_heads, T, headdim]; valid: [B, T] bool (False = padding key) or None (all valid).
    Grown by concatenation (``append`` returns a new cache; the old one is left unchanged), so its
    memory is exactly ``nbytes``: no preallocated capacity hides in it.
    """

    k: Tensor
    v: Tensor
    valid: Optional[Tensor] = None

    @property
    def length(self) -> int:
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        tensors = (self.k, self.v) + (() if self.valid is None else (self.valid,))
        return sum(t.numel() * t.element_size() for t in tensors)

    def append(self, k: Tensor, v: Tensor, valid: Optional[Tensor] = None) -> "KVCache":
        """The cache followed by new keys/values [B, kv_heads, T, headdim] (valid [B, T] or None)."""
        if self.valid is None and valid is None:
            joined = None
        else:
            old = self.valid if self.valid is not None else self.k.new_ones(self.k.shape[0], self.length, dtype=torch.bool)
            new = valid if valid is not None else k.new_ones(k.shape[0], k.shape[2], dtype=torch.bool)
            joined = torch.cat((old, new), dim=1)
        return KVCache(torch.cat((self.k, k.to(self.k.dtype)), dim=2), torch.cat((self.v, v.to(self.v.dtype)), dim=2),
                       joined)


def rotary(x: Tensor, positions: Tensor, base: float) -> Tensor:
    """Rotate pairs (i, i + headdim/2) of x [B, H, T, headdim] by positions [T] * base^(-2i/headdim)."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # [T, half], float32 whatever x is
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def attention_mask(prefix: Optional[KVCache], valid_mask: Optional[Tensor], length: int, causal: bool,
                   device) -> tuple[Optional[Tensor], bool]:
    """(bool mask [B or 1, 1, T, prefix + T] or None, is_causal) for ``length`` new tokens.

    True = may attend. None with is_causal False = everything visible; with is_causal True = the
    plain causal mask (no prefix, no padding), which lets SDPA pick its fused causal kernels.
    """
    prefix_len = 0 if prefix is None else prefix.length
    prefix_valid = None if prefix is None else prefix.valid
    if valid_mask is None and prefix_valid is None:
        if not causal or length == 1:
            return None, False
        if prefix_len == 0:
            return None, True
    idx = torch.arange(length, device=device)
    own = (idx[None, :] <= idx[:, None]) if causal else torch.ones(length, length, dtype=torch.bool, device=device)
    own = own[None]  # [1, T, T]
    if valid_mask is not None:
        own = (own & valid_mask[:, None, :]) | torch.eye(length, dtype=torch.bool, device=device)[None]
    if prefix_valid is not None:
        seen = prefix_valid[:, None, :].expand(-1, length, -1)
    else:
        seen = torch.ones(1, length, prefix_len, dtype=torch.bool, device=device)
    batch = max(own.shape[0], seen.shape[0])
    mask = torch.cat((seen.expand(batch, -1, -1), own.expand(batch, -1, -1)), dim=-1)
    return mask[:, None], False


class Attention(nn.Module):
    """u [B, T, D] -> [B, T, D]: qkv projection, rotary, SDPA, out projection (no biases).

    heads = d_model / attn_headdim; kv_heads = attn_kv_heads (0 = heads). Same init as the Mamba
    mixer's projections: nn.Linear's default here, then ``DiffMamba.reset_parameters`` rescales
    ``out_proj`` (a residual-branch end) by 1 / sqrt(2 n_layers).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.kv_heads, self.headdim = cfg.attn_heads, cfg.attn_kv_heads_resolved, cfg.attn_headdim
        self.rope_base = cfg.attn_rope_base
        self.qkv = nn.Linear(cfg.d_model, (self.heads + 2 * self.kv_heads) * self.headdim, bias=False)
        self.out_proj = nn.Linear(self.heads * self.headdim, cfg.d_model, bias=False)

    @property
    def out_projs(self) -> list[nn.Linear]:
        return [self.out_proj]

    def project(self, u: Tensor, offset: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """u [B, T, D] -> q [B, heads, T, hd], k, v [B, kv_heads, T, hd]; rotary at offset + arange(T)."""
        q, k, v = self.qkv(u).split(
            [self.heads * self.headdim, self.kv_heads * self.headdim, self.kv_heads * self.headdim], dim=-1)
        q, k, v = (x.unflatten(-1, (-1, self.headdim)).transpose(1, 2) for x in (q, k, v))
        positions = torch.arange(offset, offset + u.shape[1], device=u.device)
        return rotary(q, positions, self.rope_base), rotary(k, positions, self.rope_base), v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        """SDPA over q [B, heads, Tq, hd] and k, v [B, kv_heads, Tk, hd], then out_proj -> [B, Tq, D]."""
        if mask is not None:
            mask = mask.to(q.device)
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, is_causal=is_causal,
                                           enable_gqa=self.kv_heads != self.heads)
        return self.out_proj(y.transpose(1, 2).flatten(-2))

    def forward(
        self,
        u: Tensor,
        causal: bool = False,
        fwd_initial_state: Optional[KVCache] = None,
        return_fwd_state: bool = False,
        valid_mask: Optional[Tensor] = None,
    ):
        """u: [B, T, D]. Returns out [B, T, D], or (out, the cache grown by these T tokens)."""
        if valid_mask is not None and (valid_mask.shape != u.shape[:2] or valid_mask.dtype != torch.bool):
            raise ValueError(f"valid_mask must be a bool tensor of shape [B, T] = {list(u.shape[:2])}, "
                             f"got {valid_mask.dtype} {list(valid_mask.shape)}")
        if return_fwd_state == "every":
            raise ValueError("per-token states are for Mamba-3 layers; an attention layer's state is its KV cache")
        prefix = fwd_initial_state if fwd_initial_state is not None and fwd_initial_state.length else None
        q, k, v = self.project(u, 0 if prefix is None else prefix.length)
        mask, is_causal = attention_mask(prefix, valid_mask, u.shape[1], causal, u.device)
        keys, values = (k, v) if prefix is None else (torch.cat((prefix.k.to(k.dtype), k), 2),
                                                      torch.cat((prefix.v.to(v.dtype), v), 2))
        out = self.attend(q, keys, values, mask, is_causal)
        if not return_fwd_state:
            return out
        base = fwd_initial_state if fwd_initial_state is not None else self.init_state(u.shape[0], u.device, k.dtype)
        return out, base.append(k, v, valid_mask)

    def step(self, u_t: Tensor, state: Optional[KVCache]):
        """One causal token: u_t [B, D] -> (out_t [B, D], the cache grown by it)."""
        out, state = self(u_t[:, None], causal=True, fwd_initial_state=state, return_fwd_state=True)
        return out[:, 0], state

    def init_state(self, batch: int, device=None, dtype=None) -> KVCache:
        """An empty cache (no tokens seen)."""
        weight = self.qkv.weight
        empty = torch.empty(batch, self.kv_heads, 0, self.headdim, device=device or weight.device,
                            dtype=dtype or weight.dtype)
        return KVCache(empty, empty.clone())

    def matmul_params(self, causal: bool) -> int:
        """Weights of the projection GEMMs one token goes through (for FLOP estimates)."""
        return self.qkv.weight.numel() + self.out_proj.weight.numel()

    def attention_macs_per_token(self, seq_len: int, causal: bool) -> float:
        """Multiply-adds of q k^T and p v per query token (a causal query sees half the keys on average)."""
        keys = (seq_len + 1) / 2 if causal else seq_len
        return 2.0 * keys * self.heads * self.headdim


def is_attention(block: nn.Module) -> bool:
    return isinstance(block.mixer, Attention)
