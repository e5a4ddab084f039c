"""The threshold parallel sampler (Fast-dLLM rule) on the mock denoiser; the registry-wide invariants
(fixed tokens kept, no mask left, NFE counted, seeded) run on it in test_samplers.py."""
import pytest
import torch
from diffusion_mocks import CountingDenoiser

from diffmamba.sampling.base import SamplingError
from diffmamba.sampling.parallel import threshold_commits
from diffmamba.sampling.registry import SamplerOptions, get_sampler

V, L, MASK = 9, 16, 9


def greedy_run(threshold, block_length=0, batch=2, fixed=None):
    denoiser = CountingDenoiser(V, L, record=True)
    canvas = torch.randint(0, V, (batch, L), generator=torch.Generator().manual_seed(3))
    if fixed is None:
        fixed = torch.zeros(batch, L, dtype=torch.bool)
        fixed[:, :3] = True
        fixed[0, 10] = True
    options = SamplerOptions(temperature=0, threshold=threshold, block_length=block_length)
    result = get_sampler("parallel")(denoiser, canvas, fixed, MASK, options, torch.Generator().manual_seed(0))
    return result, denoiser, canvas, fixed


def test_each_step_commits_exactly_the_positions_above_the_threshold_plus_the_best():
    result, denoiser, canvas, fixed = greedy_run(threshold=0.3)
    states = denoiser.inputs + [result.tokens]
    assert result.nfe == denoiser.calls == len(denoiser.inputs) and not (result.tokens == MASK).any()
    assert torch.equal(result.tokens[fixed], canvas[fixed])
    for before, after in zip(states, states[1:]):
        masked = before == MASK
        probs = denoiser(before).double().softmax(-1)  # greedy: confidence = top probability
        top, best = probs.max(-1)
        most = top.masked_fill(~masked, -1).argmax(1)
        expected = masked & (top > 0.3)
        expected[torch.arange(len(most)), most] |= masked.any(1)
        committed = masked & (after != MASK)
        assert torch.equal(committed, expected)
        assert torch.equal(after[committed], best[committed])  # greedy tokens


def test_threshold_one_is_one_token_per_step_and_a_tiny_threshold_one_step():
    one, _, _, fixed = greedy_run(threshold=1.0)
    assert one.nfe == int((~fixed).sum(1).max())
    everything, _, _, _ = greedy_run(threshold=1e-9)
    assert everything.nfe == 1


def test_blocks_are_filled_left_to_right():
    result, denoiser, _, _ = greedy_run(threshold=1e-9, block_length=5)
    # Generation starts at column 3: blocks [3, 8), [8, 13), [13, 16), one step each.
    assert result.nfe == 3
    first, second = denoiser.inputs[0], denoiser.inputs[1]
    assert (first[1, 3:] == MASK).all()
    assert (second[:, 3:8] != MASK).all() and (second[1, 8:] == MASK).all()


def test_threshold_commits_rule_and_bad_threshold():
    confidence = torch.tensor([[0.95, 0.2, 0.97, 0.5], [0.1, 0.3, 0.2, 0.99]], dtype=torch.float64)
    masked = torch.tensor([[True, True, False, True], [True, True, True, False]])
    got = threshold_commits(confidence, masked, 0.9)
    assert got.tolist() == [[True, False, False, False], [False, True, False, False]]
    assert not threshold_commits(confidence, torch.zeros_like(masked), 0.9).any()
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(SamplingError, match="threshold must be in \\(0, 1\\]"):
            SamplerOptions(threshold=bad)
