"""``train.init_from``: a run that starts from another run's weights (an AR run adapted to diffusion),
refused with one line when the architecture or the tokenizer differ, and resumed from its own
checkpoints without the source."""
import json
import os
import shutil

import pytest
import torch

from diffmamba.cli import main as cli_main
from diffmamba.config import RunConfig, load_config
from diffmamba.data.tokenizer import train_bpe
from diffmamba.model import DiffMamba
from diffmamba.train.loop import Trainer

from train_helpers import TINY_CONFIG, micro_overrides


def run_cli(capsys, *args):
    code = cli_main(["train", "--config", TINY_CONFIG, "--no-progress", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def ar_run(tiny_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("warm") / "ar")
    assert cli_main(["train", "--config", TINY_CONFIG, "--no-progress", "--objective", "ar", "--out", out,
                     *micro_overrides(tiny_data, max_steps=2)]) == 0
    return out


def losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def test_a_diffusion_run_starts_from_the_ar_runs_final_weights(tiny_data, ar_run, tmp_path, capsys):
    source = DiffMamba.from_pretrained(os.path.join(ar_run, "final")).state_dict()
    # chunk_size changes no weight: a warm start may change it.
    overrides = micro_overrides(tiny_data) + [f"train.init_from={ar_run}", "model.chunk_size=8"]
    trainer = Trainer(load_config(RunConfig, TINY_CONFIG, overrides), str(tmp_path / "built"), show_progress=False)
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, source[name]), name
    fresh = Trainer(load_config(RunConfig, TINY_CONFIG, micro_overrides(tiny_data)), str(tmp_path / "fresh"),
                    show_progress=False)
    assert any(not torch.equal(t, source[n]) for n, t in fresh.model.state_dict().items())

    out = str(tmp_path / "adapted")
    code, printed, err = run_cli(capsys, "--out", out, *micro_overrides(tiny_data, max_steps=2),
                                 f"train.init_from={ar_run}")
    assert code == 0, err
    assert f"weights from {os.path.join(ar_run, 'final')} (train.init_from)" in printed
    assert len(losses(out)) == 2


def test_fresh_may_restart_a_run_from_its_own_weights(tiny_data, ar_run, tmp_path, capsys):
    """The source is read before --fresh clears the folder it lies in."""
    out = str(tmp_path / "again")
    shutil.copytree(ar_run, out)
    weights = DiffMamba.from_pretrained(os.path.join(out, "final")).state_dict()
    overrides = micro_overrides(tiny_data, max_steps=1) + [f"train.init_from={out}"]
    trainer = Trainer(load_config(RunConfig, TINY_CONFIG, overrides), out, fresh=True, show_progress=False)
    assert not os.path.exists(os.path.join(out, "final"))  # cleared by --fresh, after the source was read
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name


def test_resume_continues_exactly_from_its_own_checkpoint_without_the_source(tiny_data, ar_run, tmp_path, capsys):
    source = str(tmp_path / "source")
    shutil.copytree(ar_run, source)
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    args = (*micro_overrides(tiny_data, save_every=2), f"train.init_from={source}")
    assert run_cli(capsys, "--out", whole, "--max-steps", "4", *args)[0] == 0
    assert run_cli(capsys, "--out", split, "--max-steps", "2", *args)[0] == 0
    shutil.rmtree(source)  # the resumed run reads its own checkpoint, never the source again
    code, _, err = run_cli(capsys, "--out", split, "--resume", "--max-steps", "4", *args)
    assert code == 0, err
    assert losses(split) == losses(whole)


def test_a_source_that_does_not_fit_gets_one_line_naming_the_difference(tiny_data, ar_run, tmp_path, capsys):
    out = str(tmp_path / "x")
    code, _, err = run_cli(capsys, "--out", out, *micro_overrides(tiny_data), f"train.init_from={ar_run}",
                           "model.d_model=48")
    assert code == 2 and "Traceback" not in err
    assert "another architecture" in err and "d_model 32 vs 48" in err

    code, _, err = run_cli(capsys, "--out", out, *micro_overrides(tiny_data), f"train.init_from={tmp_path / 'nope'}")
    assert code == 2 and "does not exist" in err and "Traceback" not in err

    # Same vocabulary size, other merges: the ids mean other tokens.
    other = str(tmp_path / "other_tok")
    with open(tiny_data[0]) as f:
        mirrored = [paragraph[::-1] for paragraph in f.read().split("\n\n") if paragraph.strip()]
    train_bpe(mirrored, vocab_size=300, show_progress=False).save(other)
    code, _, err = run_cli(capsys, "--out", out, *micro_overrides(tiny_data), f"train.init_from={ar_run}",
                           f"data.tokenizer={other}")
    assert code == 2 and "another tokenizer" in err and "Traceback" not in err
    assert not os.path.exists(os.path.join(out, "checkpoints"))
