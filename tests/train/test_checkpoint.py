import json
import os

import pytest

from diffmamba.train import checkpoint as ckpt
from diffmamba.core.errors import UserError


def fake_checkpoint(folder: str, step: int) -> None:
    """The files a checkpoint needs, with valid (tiny) contents."""
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, os.path.join(folder, ckpt.MODEL_WEIGHTS))
    save_file({"w": torch.zeros(2)}, os.path.join(folder, ckpt.EMA_WEIGHTS))
    for name in ("config.json", "tokenizer.json", ckpt.RUN_CONFIG):
        with open(os.path.join(folder, name), "w") as f:
            f.write("{}\n")
    ckpt.save_training_state(folder, {"state": {}, "param_groups": []}, [ckpt.capture_rng_state()])
    ckpt.write_json(os.path.join(folder, ckpt.TRAINER_STATE), {"step": step})


def save(root, step, keep_last=5):
    return ckpt.save_checkpoint(str(root), step, lambda folder: fake_checkpoint(folder, step), keep_last)


def test_save_writes_a_complete_folder_a_manifest_and_the_latest_pointer(tmp_path):
    path = save(tmp_path, 20)
    assert os.path.basename(path) == "step_0000020"
    assert ckpt.checkpoint_problem(path) is None
    with open(os.path.join(path, ckpt.MANIFEST)) as f:
        sizes = json.load(f)
    assert sizes[ckpt.MODEL_WEIGHTS] == os.path.getsize(os.path.join(path, ckpt.MODEL_WEIGHTS))
    assert (tmp_path / "latest").read_text().strip() == "step_0000020"
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_keep_last_prunes_the_oldest_and_crash_leftovers(tmp_path):
    (tmp_path / ".tmp-step_0000001-999").mkdir()  # what a crash in the middle of a save leaves
    for step in (10, 20, 30):
        save(tmp_path, step, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [20, 30]
    assert not (tmp_path / ".tmp-step_0000001-999").exists()


def test_saving_the_same_step_again_replaces_it(tmp_path):
    save(tmp_path, 5)
    save(tmp_path, 5)
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [5]


def test_resume_takes_the_newest_complete_checkpoint(tmp_path):
    save(tmp_path, 10)
    save(tmp_path, 20)
    found = ckpt.find_resumable(str(tmp_path))
    assert found.path.endswith("step_0000020") and found.trainer_state["step"] == 20


@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage_header", "no_manifest"])
def test_a_damaged_checkpoint_is_skipped_with_a_warning(tmp_path, damage):
    save(tmp_path, 10)
    newest = save(tmp_path, 20)
    weights = os.path.join(newest, ckpt.MODEL_WEIGHTS)
    if damage == "truncate":
        with open(weights, "r+b") as f:
            f.truncate(10)
    elif damage == "delete":
        os.remove(os.path.join(newest, "optimizer.safetensors"))
    elif damage == "garbage_header":
        size = os.path.getsize(weights)
        with open(weights, "r+b") as f:
            f.write(b"\xff" * 16)
        assert os.path.getsize(weights) == size  # same size: only the safetensors check can tell
    else:
        os.remove(os.path.join(newest, ckpt.MANIFEST))
    with pytest.warns(UserWarning, match="skipping checkpoint .*step_0000020"):
        found = ckpt.find_resumable(str(tmp_path))
    assert found.path.endswith("step_0000010")


def test_no_usable_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoint in .*run without --resume"):
        ckpt.find_resumable(str(tmp_path / "missing"))
    only = save(tmp_path, 3)
    os.remove(os.path.join(only, ckpt.TRAINER_STATE))
    with pytest.warns(UserWarning), pytest.raises(UserError, match="every checkpoint .* is incomplete or corrupt"):
        ckpt.find_resumable(str(tmp_path))


def test_rng_state_round_trip():
    import random

    import numpy as np
    import torch

    state = ckpt.capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
