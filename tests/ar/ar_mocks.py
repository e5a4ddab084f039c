"""A causal mock LM whose recurrent state is the previous token, so prefill/step are exact."""
from __future__ import annotations

import torch
from torch import nn


class PreviousTokenLM(nn.Module):
    """logits_i = current[x_i] + previous[x_{i-1}] (previous[x_{-1}] = 0 without a state)."""

    def __init__(self, vocab_size: int = 12, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.mask_token_id = vocab_size
        self.current = nn.Parameter(2 * torch.randn(vocab_size + 1, vocab_size + 1, generator=g))
        self.previous = nn.Parameter(2 * torch.randn(vocab_size + 1, vocab_size + 1, generator=g))
        self.calls = {"forward": 0, "prefill": 0, "step": 0}

    def _logits(self, tokens, prev_token):
        prev = torch.cat([prev_token[:, None], tokens[:, :-1]], 1) if prev_token is not None else None
        logits = self.current[tokens]
        if prev is not None:
            logits = logits + self.previous[prev]
        else:
            logits = logits + torch.cat([torch.zeros_like(logits[:, :1]), self.previous[tokens[:, :-1]]], 1)
        logits = logits.clone()
        logits[..., self.mask_token_id] = float("-inf")
        return logits

    def forward(self, tokens, mode="ar", valid_mask=None):
        assert mode == "ar"
        self.calls["forward"] += 1
        return self._logits(tokens, None)

    def prefill(self, tokens, state=None):
        self.calls["prefill"] += 1
        return self._logits(tokens, state), tokens[:, -1]

    def step(self, token, state):
        self.calls["step"] += 1
        return self._logits(token[:, None], state)[:, 0], token
