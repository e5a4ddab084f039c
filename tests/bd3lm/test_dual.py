"""The dual objective: its two streams are exactly AR mode and the block denoiser on AR prefix states;
its loss mixes both; training through the real loop resumes exactly."""
import json
import os
import shutil

import pytest
import torch

from block_helpers import V, micro_run_overrides, random_tokens, tiny_model
from diffmamba.cli import main as cli_main
from diffmamba.config import ObjectiveConfig
from diffmamba.core.errors import UserError
from diffmamba.objectives.ar import ar_loss
from diffmamba.objectives.bd3lm import block_masked_nll, mask_blocks
from diffmamba.objectives.dual import DualTerms, dual_loss, mix
from diffmamba.objectives.schedule import make_schedule

WORDS = "the next words are drafted by the denoiser and checked by the same layers in causal mode".split()


def test_streams_are_ar_mode_and_the_denoiser_from_the_ar_prefix_state():
    model = tiny_model()
    clean = random_tokens(batch=2, length=12, seed=1)
    noisy = torch.where(torch.rand(clean.shape, generator=torch.Generator().manual_seed(2)) < 0.5, V, clean)
    with torch.no_grad():
        noisy_logits, ar_logits = model(clean, mode="ar", block_size=4, noisy=noisy)
        torch.testing.assert_close(ar_logits, model(clean, mode="ar"), rtol=1e-10, atol=1e-10)
        for b in range(3):
            state = model.prefill(clean[:, : 4 * b])[1] if b else None
            want = model(noisy[:, 4 * b: 4 * b + 4], mode="diffusion", fwd_states=state)
            got = noisy_logits[:, 4 * b: 4 * b + 4]
            assert torch.equal(torch.isinf(got), torch.isinf(want))
            torch.testing.assert_close(got[torch.isfinite(want)], want[torch.isfinite(want)], rtol=1e-10, atol=1e-10)


def test_loss_terms_mix_and_gradients_reach_both_directions():
    model = tiny_model().train()
    x0 = random_tokens(batch=3, length=12, seed=3)
    t = torch.rand(3, 3, generator=torch.Generator().manual_seed(4)).clamp(min=0.05)
    schedule = make_schedule("loglinear", 1e-3)
    terms = dual_loss(model, x0, t, 4, schedule, torch.Generator().manual_seed(5))
    reference_ar = ar_loss(model, x0)
    torch.testing.assert_close(terms.ar.nll_sum, reference_ar.nll_sum)
    assert int(terms.ar.num_tokens) == 3 * 11 and int(terms.diffusion.num_tokens) == 3 * 12
    xt = mask_blocks(x0, t, 4, schedule, V, torch.Generator().manual_seed(5))
    hidden = model(x0, mode="ar", block_size=4, noisy=xt, return_hidden=True)[0]
    torch.testing.assert_close(terms.diffusion.nll_sum, block_masked_nll(model, hidden, x0, xt, t, 4, schedule).nll_sum)
    total, count = mix(terms, 0.25)
    assert float(count) == pytest.approx(0.75 * 36 + 0.25 * 33)
    torch.testing.assert_close(total, 0.75 * terms.diffusion.nll_sum + 0.25 * terms.ar.nll_sum)
    total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name  # reverse-direction params included
    only_ar = [x.detach() for x in mix(DualTerms(terms.diffusion, terms.ar), 1.0)]
    assert float(only_ar[0]) == pytest.approx(float(terms.ar.nll_sum.detach())) and float(only_ar[1]) == 33


def test_config_checks():
    with pytest.raises(UserError, match="objective.ar_weight"):
        ObjectiveConfig(name="dual", block_size=4, ar_weight=1.5)
    with pytest.raises(UserError, match="dual needs block_size >= 1"):
        ObjectiveConfig(name="dual")


@pytest.fixture(scope="module")
def micro_args(tmp_path_factory):
    return micro_run_overrides(tmp_path_factory.mktemp("dual-train"), WORDS, train__max_steps=4, train__eval_every=2,
                               train__save_every=2, train__keep_last=5, objective__block_size=8,
                               objective__ar_weight=0.3)


def losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in records if "loss" in r or "val_loss" in r]


@pytest.mark.slow
def test_dual_training_resumes_exactly(micro_args, tmp_path):
    """A 4-step run, and the same run rolled back to its step-2 checkpoint and resumed: identical."""
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs",
                          "tiny.yaml")
    full = str(tmp_path / "full")
    assert cli_main(["train", "--out", full, "--config", config, "--objective", "dual", "--no-progress",
                     *micro_args]) == 0
    resumed = str(tmp_path / "resumed")
    shutil.copytree(full, resumed)
    shutil.rmtree(os.path.join(resumed, "final"))
    shutil.rmtree(os.path.join(resumed, "checkpoints", "step_0000004"))
    with open(os.path.join(resumed, "checkpoints", "latest"), "w") as f:
        f.write("step_0000002\n")
    with open(os.path.join(resumed, "metrics.jsonl")) as f:  # as if the run had stopped after step 2
        kept = [line for line in f if json.loads(line).get("step", 0) <= 2]
    with open(os.path.join(resumed, "metrics.jsonl"), "w") as f:
        f.writelines(kept)
    assert cli_main(["train", "--out", resumed, "--resume", "--no-progress"]) == 0
    want, got = losses(full), losses(resumed)
    assert [s for s, _, _ in got] == [s for s, _, _ in want] and len({s for s, _, _ in want}) == 4
    for (step, loss_a, val_a), (_, loss_b, val_b) in zip(want, got):
        assert loss_a == pytest.approx(loss_b, abs=1e-6) if loss_a is not None else loss_b is None, step
        assert val_a == pytest.approx(val_b, abs=1e-6) if val_a is not None else val_b is None, step


@pytest.mark.parametrize("sampler", ["parallel", "ancestral"])
def test_block_sampling_from_ar_prefix_states_is_exact_and_keeps_the_prompt(sampler):
    from diffmamba.sampling.bd3lm import block_sample
    from diffmamba.sampling.base import SamplerOptions

    model = tiny_model()
    canvas = torch.full((2, 14), V)
    canvas[:, :6] = random_tokens(batch=2, length=6, seed=7)
    fixed = canvas != V
    options = SamplerOptions(steps=4, threshold=0.5)
    runs = [block_sample(model, canvas, fixed, 4, sampler=sampler, options=options, ar_prefix=True, use_cache=cached,
                         generator=torch.Generator().manual_seed(3)) for cached in (True, False)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert torch.equal(runs[0].tokens[:, :6], canvas[:, :6]) and not (runs[0].tokens == V).any()
