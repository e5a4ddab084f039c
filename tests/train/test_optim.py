import math

import pytest
import torch
from torch import nn

from diffmamba.config import TrainConfig
from diffmamba.train.optim import EMA, build_optimizer, lr_at, parameter_groups


def test_warmup_is_linear_then_cosine_reaches_the_floor():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1, lr_schedule="cosine")
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(4, cfg) == pytest.approx(5e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4)  # halfway down the cosine
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    assert lr_at(500, cfg) == pytest.approx(1e-4)  # past max_steps (a resumed, extended run) stays at the floor
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_constant_schedule_after_warmup():
    cfg = TrainConfig(lr=3e-4, warmup_steps=4, max_steps=100, lr_schedule="constant")
    assert [lr_at(s, cfg) for s in (0, 3, 4, 99)] == pytest.approx([7.5e-5, 3e-4, 3e-4, 3e-4])
    assert lr_at(0, TrainConfig(lr=3e-4, warmup_steps=0, lr_schedule="constant")) == 3e-4


def test_no_weight_decay_on_vectors_of_a_plain_module():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [names[id(p)] for p in decay["params"]] == ["0.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["0.bias", "1.bias", "1.weight"]


def test_diffmamba_decays_only_projection_and_embedding_matrices():
    from diffmamba.config import ModelConfig
    from diffmamba.model import DiffMamba

    model = DiffMamba(ModelConfig(vocab_size=50, d_model=32, n_layers=1, headdim=16, d_state=16, chunk_size=16))
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "embedding.weight" in decayed
    assert all(not any(k in n for k in ("norm", "dt_bias", "bias")) and not n.endswith(".D") for n in decayed)
    kept = {names[id(p)] for p in no_decay["params"]}
    assert any("dt_bias" in n for n in kept) and any("norm" in n for n in kept)
    assert len(decayed) + len(kept) == len(list(model.parameters()))


def test_tied_parameters_are_optimised_once():
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight
    groups = parameter_groups(model, 0.1)
    assert sum(len(g["params"]) for g in groups) == 1
    optimizer = build_optimizer(model, TrainConfig(betas=(0.9, 0.95), adam_eps=1e-6))
    assert optimizer.defaults["betas"] == (0.9, 0.95) and optimizer.defaults["eps"] == 1e-6


def test_ema_warms_up_and_swaps_back_exactly():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0): early updates follow the weights
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for e, s in zip(ema.params, start):
        torch.testing.assert_close(e, s + 0.9)
    trained = [p.detach().clone() for p in model.parameters()]
    with ema.swapped_into(model):
        for p, e in zip(model.parameters(), ema.params):
            assert torch.equal(p, e)
    for p, t in zip(model.parameters(), trained):
        assert torch.equal(p, t)
    for _ in range(10_000):
        ema.num_updates += 1
    assert ema.current_decay() == 0.999


def test_ema_load_from_a_full_state_dict():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    saved = {k: v + 5 for k, v in model.state_dict().items()}
    trained = [p.detach().clone() for p in model.parameters()]
    ema.load_from(model, saved, num_updates=7)
    assert ema.num_updates == 7
    assert torch.equal(ema.params[0], saved["weight"]) and torch.equal(ema.params[1], saved["bias"])
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), trained))
    assert math.isclose(ema.current_decay(), 8 / 17)  # the warm-up continues from the saved count
