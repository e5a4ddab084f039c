"""Mock denoisers and models for the diffusion tests (no DiffMamba needed)."""
from __future__ import annotations

import torch
from torch import nn


class CountingDenoiser:
    """Deterministic, bidirectional, time-agnostic mock denoiser that counts and records calls.

    logits[b, i] = position_bias[i] + mean_j token_effect[x[b, j]], mask column = -inf, so the
    output depends on every position of x (a changed token changes all logits).
    """

    def __init__(self, vocab_size: int, length: int, seed: int = 0, record: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.vocab_size = vocab_size
        self.mask_id = vocab_size
        self.position_bias = 2 * torch.randn(length, vocab_size + 1, generator=g)
        self.token_effect = torch.randn(vocab_size + 1, vocab_size + 1, generator=g)
        self.record = record
        self.calls = 0
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.record:
            self.inputs.append(x.clone())
        logits = self.position_bias[None, : x.shape[1]] + self.token_effect[x].mean(1, keepdim=True)
        logits[..., self.mask_id] = float("-inf")
        return logits


class TinyDiffusionModel(nn.Module):
    """A model-shaped mock: ``model(tokens, mode=..., valid_mask=None)`` -> [B, T, V+1] logits."""

    def __init__(self, vocab_size: int = 7, dim: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.vocab_size = vocab_size
        self.mask_token_id = vocab_size
        self.embedding = nn.Embedding(vocab_size + 1, dim)
        self.mix = nn.Linear(2 * dim, dim)
        self.out = nn.Linear(dim, vocab_size + 1)
        self.seen_valid_masks: list = []

    def hidden(self, tokens, valid_mask=None):
        h = self.embedding(tokens)
        context = h.mean(1, keepdim=True).expand_as(h)
        return torch.tanh(self.mix(torch.cat([h, context], -1)))

    def forward(self, tokens, mode="diffusion", valid_mask=None):
        assert mode == "diffusion"
        self.seen_valid_masks.append(valid_mask)
        logits = self.out(self.hidden(tokens, valid_mask))
        logits[..., self.mask_token_id] = float("-inf")
        return logits


class TinyDiffusionModelWithHead(TinyDiffusionModel):
    """Same network exposing ``return_hidden`` and ``logits(hidden)`` like DiffMamba."""

    def forward(self, tokens, mode="diffusion", valid_mask=None, return_hidden=False):
        if not return_hidden:
            return super().forward(tokens, mode, valid_mask)
        return self.hidden(tokens, valid_mask)

    def logits(self, hidden):
        logits = self.out(hidden)
        logits[..., self.mask_token_id] = float("-inf")
        return logits
