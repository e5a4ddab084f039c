"""Clean-distribution filters and float64 Gumbel-max (docs/masked-diffusion.md §2.7-2.8)."""
import pytest
import torch

from diffmamba.sampling.categorical import (
    clean_distribution, gumbel_argmax, sample_tokens, token_probability, top_k_filter, top_p_filter,
)


def test_top_p_keeps_the_nucleus_and_renormalises():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]], dtype=torch.float64)
    torch.testing.assert_close(top_p_filter(probs, 0.7), torch.tensor([[0, 0.625, 0, 0.375]], dtype=torch.float64))
    torch.testing.assert_close(top_p_filter(probs, 0.85), torch.tensor([[0.15, 0.5, 0, 0.3]], dtype=torch.float64) / 0.95)
    # The top-1 is always kept, however small p is.
    torch.testing.assert_close(top_p_filter(probs, 1e-9), torch.tensor([[0, 1.0, 0, 0]], dtype=torch.float64))
    assert torch.equal(top_p_filter(probs, 1.0), probs)
    with pytest.raises(ValueError):
        top_p_filter(probs, 0.0)


def test_top_k_and_clean_distribution_never_give_mass_to_the_mask():
    logits = torch.tensor([[2.0, 1.0, 0.0, 3.0, 50.0]])  # last column = mask id 4, huge logit
    probs = clean_distribution(logits, 4, temperature=0.5, top_k=2)
    assert probs.dtype == torch.float64 and probs[0, 4] == 0
    assert (probs[0, [1, 2]] == 0).all() and probs.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(top_k_filter(torch.tensor([[0.1, 0.6, 0.3]]), 1), torch.tensor([[0.0, 1.0, 0.0]]))
    greedy = clean_distribution(logits, 4, temperature=0)
    assert torch.equal(greedy, torch.tensor([[0, 0, 0, 1.0, 0]], dtype=torch.float64))
    assert sample_tokens(logits, 4, temperature=0).item() == 3
    assert token_probability(logits, torch.tensor([3]), 4).item() == pytest.approx(
        torch.tensor([2.0, 1.0, 0.0, 3.0]).softmax(-1)[3].item())


def test_gumbel_draws_follow_the_distribution():
    probs = torch.tensor([0.6, 0.25, 0.1, 0.05], dtype=torch.float64).expand(40000, 4)
    draws = gumbel_argmax(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    torch.testing.assert_close(freq, probs[0], atol=0.01, rtol=0)
    tempered = sample_tokens(torch.log(probs), None, torch.Generator().manual_seed(1), temperature=2.0)
    expected = probs[0].sqrt() / probs[0].sqrt().sum()
    torch.testing.assert_close(torch.bincount(tempered, minlength=4).double() / 40000, expected, atol=0.01, rtol=0)
