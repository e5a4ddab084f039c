"""Models with known distributions for the evaluation tests.

``MarkovLM``: tokens 0..K-1 follow a first-order Markov chain (initial ``pi``, transitions ``P``);
id K is EOS (the chain's start state, never emitted), id K+1 the mask. In AR mode it returns the
exact conditionals, so its NLL is the chain's true NLL. In diffusion mode it returns, at every masked
position, the exact posterior marginal p(x_i | unmasked tokens) (forward-backward). With exact
marginals the continuous-time NELBO is tight: it equals the true NLL in expectation (an any-order AR
factorisation), up to the schedule's eps truncation. ``unigram=q`` replaces the denoiser by a
context-free one that always predicts ``q``: the model it defines draws i.i.d. tokens from ``q``, its
exact NLL is -sum log q(x_i), and its NELBO must sit at that value, above the chain's true NLL.
"""
import torch


class MarkovLM(torch.nn.Module):
    def __init__(self, pi: torch.Tensor, P: torch.Tensor, unigram=None):
        super().__init__()
        self.unigram = None if unigram is None else unigram.double() / unigram.sum()
        self.K = pi.numel()
        self.pi = pi.double() / pi.sum()
        self.P = P.double() / P.sum(-1, keepdim=True)
        self.eos_id = self.K
        self.mask_token_id = self.K + 1
        self._dummy = torch.nn.Parameter(torch.zeros(()))  # so .parameters() has a device

    def sample(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        x = torch.empty(n, length, dtype=torch.long)
        x[:, 0] = torch.multinomial(self.pi.expand(n, -1), 1, generator=generator)[:, 0]
        for i in range(1, length):
            x[:, i] = torch.multinomial(self.P[x[:, i - 1]], 1, generator=generator)[:, 0]
        return x

    def unigram_nll(self, x: torch.Tensor) -> float:
        return float(-torch.log(self.unigram[x]).sum())

    def true_nll(self, x: torch.Tensor) -> float:
        nll = -torch.log(self.pi[x[:, 0]]).sum()
        nll -= torch.log(self.P[x[:, :-1], x[:, 1:]]).sum()
        return float(nll)

    def _full(self, probs: torch.Tensor) -> torch.Tensor:
        """[..., K] probabilities -> [..., K + 2] logits (EOS and mask at -inf)."""
        pad = torch.full((*probs.shape[:-1], 2), float("-inf"), dtype=torch.float64)
        return torch.cat([probs.clamp_min(1e-300).log(), pad], dim=-1).float()

    def forward(self, tokens: torch.Tensor, mode: str = "diffusion", valid_mask=None):
        if mode == "ar":
            rows = torch.where(tokens == self.eos_id, torch.zeros_like(tokens), tokens).clamp(max=self.K - 1)
            probs = self.P[rows]
            probs = torch.where((tokens == self.eos_id)[..., None], self.pi.expand_as(probs), probs)
            return self._full(probs)
        B, T = tokens.shape
        if self.unigram is not None:
            return self._full(self.unigram.expand(B, T, self.K))
        masked = tokens == self.mask_token_id
        obs = torch.ones(B, T, self.K, dtype=torch.float64)
        known = ~masked
        obs[known] = torch.nn.functional.one_hot(tokens[known], self.K).double()
        alpha = torch.empty(B, T, self.K, dtype=torch.float64)
        a = self.pi * obs[:, 0]
        alpha[:, 0] = a / a.sum(-1, keepdim=True)
        for i in range(1, T):
            a = (alpha[:, i - 1] @ self.P) * obs[:, i]
            alpha[:, i] = a / a.sum(-1, keepdim=True)
        beta = torch.ones(B, T, self.K, dtype=torch.float64)
        for i in range(T - 2, -1, -1):
            b = (obs[:, i + 1] * beta[:, i + 1]) @ self.P.T
            beta[:, i] = b / b.sum(-1, keepdim=True)
        post = alpha * beta
        return self._full(post / post.sum(-1, keepdim=True))
