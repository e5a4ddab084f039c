"""The optimizer and RNG states of a checkpoint round-trip exactly through safetensors + JSON
(diffmamba/statefile.py), and damaged ones are refused in one line."""
import json
import random

import numpy as np
import pytest
import torch

from diffmamba.train import checkpoint as ckpt
from diffmamba.core import statefile
from diffmamba.core.errors import UserError


def adamw_state() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    for _ in range(3):
        model(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
    return optimizer.state_dict()


def assert_same(a, b):
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        bits = (lambda t: t.reshape(-1).view(torch.uint8))  # bit for bit: -0.0 and NaN payloads included
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b or (a != a and b != b)  # NaN equals NaN here


def test_optimizer_state_round_trips_bit_for_bit(tmp_path):
    state = adamw_state()  # integer state keys, tuples in param_groups, 0-dim step tensors
    statefile.save_state(state, str(tmp_path), "optimizer")
    assert_same(statefile.load_state(str(tmp_path), "optimizer", "fix"), state)


def test_odd_values_round_trip(tmp_path):
    value = {"$odd": 1, 2: (float("nan"), float("inf"), -0.0, 1e-310), "t": torch.arange(3, dtype=torch.bfloat16),
             "empty": torch.zeros(0, 2), (1, "a"): [None, True, "x"], "np": np.arange(6, dtype=np.uint32).reshape(2, 3)}
    statefile.save_state(value, str(tmp_path), "s")
    assert_same(statefile.load_state(str(tmp_path), "s", "fix"), value)


def test_rng_states_round_trip_and_continue_the_same_streams(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # a cached gaussian in numpy's state
    ckpt.save_training_state(str(tmp_path), {"state": {}, "param_groups": []}, [ckpt.capture_rng_state()])
    expected = (random.random(), np.random.randn(), torch.rand(2).tolist())
    (restored,) = ckpt.load_rng_states(str(tmp_path))
    ckpt.restore_rng_state(restored)
    assert (random.random(), np.random.randn(), torch.rand(2).tolist()) == expected


@pytest.mark.parametrize("damage", ["empty", "garbage", "wrong_format", "dangling_tensor"])
def test_a_damaged_state_file_is_a_user_error_naming_it(tmp_path, damage):
    ckpt.save_training_state(str(tmp_path), adamw_state(), [ckpt.capture_rng_state()])
    json_path, tensor_path = statefile.paths(str(tmp_path), "optimizer")
    if damage == "empty":
        open(tensor_path, "w").close()
    elif damage == "garbage":
        with open(json_path, "wb") as f:
            f.write(bytes(range(256)))
    elif damage == "wrong_format":
        with open(json_path, "w") as f:
            json.dump({"format": "other", "value": {}}, f)
    else:
        with open(json_path, "w") as f:
            json.dump({"format": statefile.FORMAT, "value": {"$tensor": "t999"}}, f)
    with pytest.raises(UserError, match="optimizer.(json|safetensors) .*delete that checkpoint folder"):
        ckpt.load_optimizer_state(str(tmp_path))


def test_a_malformed_rng_state_is_a_user_error(tmp_path):
    statefile.save_state([{"python": 1, "numpy": "x", "torch": torch.zeros(3)}], str(tmp_path), "rng_state")
    (state,) = ckpt.load_rng_states(str(tmp_path))
    with pytest.raises(UserError, match="RNG state .* is malformed"):
        ckpt.restore_saved_rng_state(str(tmp_path), state)
