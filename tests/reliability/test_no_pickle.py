"""No file a resume reads is ever unpickled unrestricted: a pickle payload planted in any of them
(with the manifest fixed up, so it reaches the loader) must not run, and the resume ends in one line
and exit code 2 (or succeeds when that file is not needed)."""
import json
import os
import pickle

import pytest
import torch

from diffmamba.train import checkpoint as ckpt
from diffmamba.cli import main

from reliability_helpers import checkpoint_dir, error_lines, train_command


class Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path: str, marker: str, torch_format: bool = False) -> None:
    if torch_format:
        torch.save({"state": Payload(marker)}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(Payload(marker), f)
    folder = os.path.dirname(path)
    manifest = os.path.join(folder, ckpt.MANIFEST)
    if os.path.basename(path) != ckpt.MANIFEST and os.path.isfile(manifest):
        with open(manifest) as f:
            sizes = json.load(f)
        sizes = {name: os.path.getsize(os.path.join(folder, name)) for name in sizes
                 if os.path.exists(os.path.join(folder, name))}
        sizes[os.path.basename(path)] = os.path.getsize(path)
        ckpt.write_json(manifest, sizes)


def resume(out, micro_data, capsys) -> tuple[int, str]:
    code = main(train_command(out, micro_data, "--resume", "--max-steps", "3"))
    return code, capsys.readouterr().err


def test_the_payload_does_run_when_unpickled(tmp_path):
    marker = str(tmp_path / "ran")
    plant(str(tmp_path / "p.pkl"), marker)
    with open(tmp_path / "p.pkl", "rb") as f:
        pickle.load(f).close()
    assert os.path.exists(marker)  # so its absence below means the loaders never ran it


CHECKPOINT_FILES = ["model.safetensors", "ema.safetensors", "config.json", "tokenizer.json", "run_config.yaml",
                    "trainer_state.json", "optimizer.json", "optimizer.safetensors", "rng_state.json",
                    "rng_state.safetensors", "manifest.json"]


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_payload_in_any_checkpoint_file_never_runs(run_copy, micro_data, tmp_path, capsys, name):
    marker = str(tmp_path / "ran")
    assert name in os.listdir(checkpoint_dir(run_copy))
    plant(os.path.join(checkpoint_dir(run_copy), name), marker)
    code, err = resume(run_copy, micro_data, capsys)
    assert not os.path.exists(marker)
    # refused in one line, or (config.json: training does not read it) resumed without looking at it
    assert (code == 2 and len(error_lines(err)) == 1) or (code == 0 and not error_lines(err)), err


@pytest.mark.parametrize("name", ["config.yaml", "checkpoints/latest", "metrics.jsonl"])
def test_a_payload_in_the_run_folder_never_runs(run_copy, micro_data, tmp_path, capsys, name):
    marker = str(tmp_path / "ran")
    plant(os.path.join(run_copy, name), marker)
    code, err = resume(run_copy, micro_data, capsys)
    assert not os.path.exists(marker)
    assert (code == 2 and len(error_lines(err)) == 1) or (code == 0 and not error_lines(err)), err


@pytest.mark.parametrize("state", ["optimizer", "rng_state"])
@pytest.mark.parametrize("torch_format", [False, True])
def test_a_payload_in_an_older_checkpoints_pickle_never_runs(run_copy, micro_data, tmp_path, capsys, state,
                                                            torch_format):
    """Checkpoints of older versions hold optimizer.pt / rng_state.pt: read with weights_only, or refused."""
    folder, marker = checkpoint_dir(run_copy), str(tmp_path / "ran")
    for suffix in (".json", ".safetensors"):
        os.remove(os.path.join(folder, state + suffix))
    plant(os.path.join(folder, state + ".pt"), marker, torch_format)
    code, err = resume(run_copy, micro_data, capsys)
    assert not os.path.exists(marker)
    assert code == 2 and f"{state}.pt cannot be read safely" in err and "Traceback" not in err, err


def test_an_older_checkpoint_with_plain_pickles_still_resumes(run_copy, micro_data, capsys):
    """What older versions wrote (torch.save of the optimizer state and of numpy/python RNG states)
    loads through the restricted unpickler."""
    folder = checkpoint_dir(run_copy)
    optimizer, rngs = ckpt.load_optimizer_state(folder), ckpt.load_rng_states(folder)
    for state, value in (("optimizer", optimizer), ("rng_state", rngs)):
        for suffix in (".json", ".safetensors"):
            os.remove(os.path.join(folder, state + suffix))
        torch.save(value, os.path.join(folder, state + ".pt"))
    sizes = {n: os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder) if n != ckpt.MANIFEST}
    ckpt.write_json(os.path.join(folder, ckpt.MANIFEST), sizes)
    code, err = resume(run_copy, micro_data, capsys)
    assert code == 0, err
