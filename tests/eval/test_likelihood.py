"""The likelihood evaluators against a model whose true NLL is known exactly."""
import math

import torch

from diffmamba.eval.likelihood import ar_likelihood, diffusion_likelihood
from eval_mocks import MarkovLM


def _chain(sticky: float):
    K = 4
    P = torch.full((K, K), (1 - sticky) / (K - 1))
    P.fill_diagonal_(sticky)
    return MarkovLM(torch.tensor([0.4, 0.3, 0.2, 0.1]), P)


def test_ar_nll_is_the_exact_chain_nll():
    lm = _chain(0.85)
    x = lm.sample(32, 16, torch.Generator().manual_seed(0))
    res = ar_likelihood(lm, x, None, bos_id=lm.eos_id, batch_size=8)
    exact = lm.true_nll(x) / x.numel()
    print(f"AR {res['nll_per_token']:.6f} exact {exact:.6f}")
    assert res["tokens"] == x.numel()
    assert abs(res["nll_per_token"] - exact) < 1e-5


def test_bound_is_tight_for_exact_marginals_and_above_for_a_worse_denoiser():
    gen = torch.Generator().manual_seed(1)
    lm = _chain(0.9)
    x = lm.sample(512, 16, gen)
    exact = lm.true_nll(x) / x.numel()
    # Exact posterior marginals: the NELBO equals the true NLL in expectation (any-order AR).
    b = diffusion_likelihood(lm, x, None, repeats=4, seed=0, batch_size=128)
    sem = b["nll_std"] / math.sqrt(4)
    print(f"exact marginals: bound {b['nll_per_token']:.4f} ± {b['nll_std']:.4f}, true NLL {exact:.4f}")
    assert all(math.isfinite(r) for r in b["repeats"]) and len(b["repeats"]) == 4 and b["nll_std"] > 0
    assert abs(b["nll_per_token"] - exact) < 4 * sem + 0.01 * exact
    # Seeded: the same seed gives the same estimate.
    again = diffusion_likelihood(lm, x, None, repeats=1, seed=0, batch_size=128)
    assert again["repeats"][0] == b["repeats"][0]
    # A context-free denoiser defines an i.i.d. model: its bound sits at that model's exact NLL,
    # far above the chain's true NLL (>= holds with a wide margin).
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])
    worse = MarkovLM(lm.pi, lm.P, unigram=q)
    bw = diffusion_likelihood(worse, x, None, repeats=3, seed=0, batch_size=128)
    own = worse.unigram_nll(x) / x.numel()
    print(f"unigram denoiser: bound {bw['nll_per_token']:.4f} ± {bw['nll_std']:.4f}, its exact NLL {own:.4f}, "
          f"chain NLL {exact:.4f}")
    assert bw["nll_per_token"] >= exact + 0.5
    assert abs(bw["nll_per_token"] - own) < 4 * bw["nll_std"] / math.sqrt(3) + 0.01 * own
    assert b["nll_per_token"] < bw["nll_per_token"]


def test_padding_is_excluded():
    lm = _chain(0.8)
    x = lm.sample(8, 12, torch.Generator().manual_seed(2))
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[:, 8:] = False
    res = ar_likelihood(lm, x, valid, bos_id=lm.eos_id)
    assert res["tokens"] == 8 * 8
    assert abs(res["nll_per_token"] - lm.true_nll(x[:, :8]) / 64) < 1e-5
