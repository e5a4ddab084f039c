"""End-to-end runs of the loop in this process, on a micro model (a fraction of a second per step)."""
import json
import math
import os

import pytest
import torch
import yaml

from diffmamba.train import checkpoint as ckpt
from diffmamba.cli import main as cli_main
from diffmamba.config import RunConfig, load_config
from diffmamba.core.errors import UserError
from diffmamba.cli.train import split_dotted_options
from diffmamba.train import train
from diffmamba.train.loop import TrainingDiverged, batch_layout

from train_helpers import TINY_CONFIG, micro_overrides


def run_cli(capsys, *args):
    code = cli_main(["train", "--config", TINY_CONFIG, "--no-progress", *args])
    return code, capsys.readouterr().err


def error_line(err: str) -> str:
    """The one error line of a failed command (progress bars may precede it; no traceback)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_a_run_writes_config_metrics_checkpoints_and_a_loadable_final_model(tiny_data, tmp_path):
    from safetensors.torch import load_file

    from diffmamba.data import load_tokenizer
    from diffmamba.model import DiffMamba

    out = str(tmp_path / "run")
    cfg = load_config(RunConfig, TINY_CONFIG, micro_overrides(tiny_data, eval_every=2, save_every=2, keep_last=1))
    result = train(cfg, out, show_progress=False)

    with open(os.path.join(out, "config.yaml")) as f:
        resolved = yaml.safe_load(f)
    assert resolved["model"]["vocab_size"] == 300  # taken from the tokenizer
    assert resolved["train"]["max_steps"] == 4

    records = read_metrics(out)
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4]
    for r in train_records:
        assert {"lr", "tokens_per_s", "grad_norm", "mfu"} <= set(r) and math.isfinite(r["loss"]) and r["mfu"] is None
    assert train_records[0]["lr"] == pytest.approx(1.5e-3)  # warm-up: step 1 of 2
    val = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in val] == [2, 4]
    assert val[-1]["val_ppl"] == pytest.approx(math.exp(val[-1]["val_loss"]))
    assert result["val_loss"] == val[-1]["val_loss"] and result["step"] == 4

    assert [s for s, _ in ckpt.list_checkpoints(os.path.join(out, "checkpoints"))] == [4]
    last = os.path.join(out, "checkpoints", "step_0000004")
    assert ckpt.checkpoint_problem(last) is None
    with open(os.path.join(last, ckpt.TRAINER_STATE)) as f:
        state = json.load(f)
    assert state["step"] == 4 and state["data_position"] == {"epoch": 0, "index": 32} and state["ema_updates"] == 4

    final = os.path.join(out, "final")
    model = DiffMamba.from_pretrained(final)
    assert model.config.vocab_size == 300 and model.mask_token_id == 300 and load_tokenizer(final).mask_id == 300
    ema = load_file(os.path.join(last, ckpt.EMA_WEIGHTS))
    for name, tensor in model.state_dict().items():  # final/ holds the EMA weights by default
        assert torch.equal(tensor, ema[name]), name
    raw = DiffMamba.from_pretrained(last).state_dict()
    assert any(not torch.equal(raw[n], ema[n]) for n in raw)
    logits = model(torch.randint(0, 300, (2, 16)), mode="diffusion")
    assert logits.shape == (2, 16, 301) and torch.isfinite(logits[..., :300]).all()


def test_ar_objective_from_the_command_line(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "ar")
    code, err = run_cli(capsys, "--objective", "ar", "--max-steps", "2", "--out", out, "--train.eval_every", "2",
                        *micro_overrides(tiny_data, ema=0))
    assert code == 0, err
    with open(os.path.join(out, "config.yaml")) as f:
        resolved = yaml.safe_load(f)
    assert resolved["objective"]["name"] == "ar" and resolved["train"]["max_steps"] == 2
    val = [r for r in read_metrics(out) if "val_loss" in r]
    assert len(val) == 1 and 0 < val[0]["val_loss"] < math.log(300) + 1
    with open(os.path.join(out, "final", "export.json")) as f:
        assert json.load(f)["weights"] == "raw"  # train.ema=0: nothing to average


def test_an_existing_run_is_never_overwritten(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run_cli(capsys, "--out", out, "--max-steps", "1", *micro_overrides(tiny_data))[0] == 0
    code, err = run_cli(capsys, "--out", out, "--max-steps", "1", *micro_overrides(tiny_data))
    assert code == 2 and "already holds a run; pass --resume" in error_line(err)
    code, err = run_cli(capsys, "--out", out, "--resume", *micro_overrides(tiny_data), "model.d_model=64")
    assert code == 2 and "model config differs from the checkpoint's (d_model)" in err


def test_resume_of_a_folder_without_checkpoints(tiny_data, tmp_path, capsys):
    code, err = run_cli(capsys, "--out", str(tmp_path / "nothing"), "--resume", *micro_overrides(tiny_data))
    assert code == 2 and "no checkpoint in" in err


def test_resume_can_extend_a_finished_run(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run_cli(capsys, "--out", out, "--max-steps", "2", *micro_overrides(tiny_data))[0] == 0
    # Without --config the run's own config.yaml is the base.
    assert cli_main(["train", "--out", out, "--resume", "--max-steps", "3", "--no-progress"]) == 0
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == [1, 2, 3]


def test_mistakes_get_one_line_naming_the_fix(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "x")
    code, err = run_cli(capsys, "--out", out, *micro_overrides(tiny_data), "train.lr_max=1")
    assert code == 2 and "unknown config key 'train.lr_max'" in error_line(err)
    code, err = run_cli(capsys, "--out", out, *micro_overrides(tiny_data, global_batch_size=10))
    assert code == 2 and "train.global_batch_size" in err and "multiple" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, err = run_cli(capsys, "--out", out, *micro_overrides(tiny_data), f"data.source={empty}")
    assert code == 2 and str(empty) in error_line(err)
    code, err = run_cli(capsys, "--out", out, *micro_overrides(tiny_data), f"data.source={tmp_path / 'missing.txt'}")
    assert code == 2 and "missing.txt" in error_line(err)
    code, err = run_cli(capsys, "--out", out, *micro_overrides(tiny_data), f"data.tokenizer={no_eos_tokenizer(tmp_path)}")
    assert code == 2 and "no end-of-text token" in error_line(err)
    code, err = run_cli(capsys, "--out", out, *micro_overrides(tiny_data), "data.seq_len=2048")
    assert code == 2 and "model.max_seq_len" in err
    assert not os.path.exists(os.path.join(out, "checkpoints"))


def no_eos_tokenizer(folder) -> str:
    """A word-level tokenizer.json without any end-of-text token."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    hf = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1, "model": 2}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    path = str(folder / "no_eos.json")
    hf.save(path)
    return path


def test_global_batch_must_split_over_processes():
    cfg = load_config(RunConfig, TINY_CONFIG, ["train.global_batch_size=16", "train.micro_batch_size=4"])
    assert batch_layout(cfg, 2).accumulation_steps == 2
    with pytest.raises(UserError, match=r"not divisible by .* 4 x 3 = 12; .*multiple of 12"):
        batch_layout(cfg, 3)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch, capsys):
    from diffmamba import objectives

    calls = {"n": 0}
    real = objectives.OBJECTIVES["diffusion"]

    def exploding(model, batch, objective):
        nll = real.train(model, batch, objective)
        calls["n"] += 1
        # 2 micro-batches per step: the third step's loss is NaN
        return objectives.NLL(nll.total * (float("nan") if calls["n"] > 4 else 1.0), nll.count)

    monkeypatch.setitem(objectives.OBJECTIVES, "diffusion", objectives.Objective(exploding, real.evaluate, "diffusion"))
    out = str(tmp_path / "nan")
    code, err = run_cli(capsys, "--out", out, *micro_overrides(tiny_data, save_every=1, keep_last=5))
    assert code == 2
    assert "loss is nan" in err and "step 3" in err and "step_0000002" in err
    assert [s for s, _ in ckpt.list_checkpoints(os.path.join(out, "checkpoints"))] == [1, 2]
    assert (tmp_path / "nan" / "checkpoints" / "latest").read_text().strip() == "step_0000002"
    assert not os.path.exists(os.path.join(out, "final"))


def test_nan_weights_are_never_saved(tiny_data, tmp_path):
    cfg = load_config(RunConfig, TINY_CONFIG, micro_overrides(tiny_data, save_every=1, lr=float("inf")))
    with pytest.raises(TrainingDiverged, match="weights became NaN/inf at step 1"):
        train(cfg, str(tmp_path / "inf"), show_progress=False)
    assert ckpt.list_checkpoints(str(tmp_path / "inf" / "checkpoints")) == []


def test_dotted_options_become_overrides():
    rest, overrides = split_dotted_options(["--config", "c.yaml", "--train.lr", "1e-3", "--model.d_model=64",
                                            "--x.y", "-1", "--resume"])
    assert rest == ["--config", "c.yaml", "--resume"]
    assert overrides == ["train.lr=1e-3", "model.d_model=64", "x.y=-1"]
    with pytest.raises(UserError, match="needs a value"):
        split_dotted_options(["--train.lr"])


def test_tensorboard_logging_or_a_clear_error_without_it(tiny_data, tmp_path):
    import importlib.util

    out = str(tmp_path / "tb")
    cfg = load_config(RunConfig, TINY_CONFIG, micro_overrides(tiny_data, max_steps=1, tensorboard=True))
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(UserError, match="pip install tensorboard"):
            train(cfg, out, show_progress=False)
        assert not os.path.exists(out)  # refused before writing anything
    else:
        train(cfg, out, show_progress=False)
        assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(out, "tensorboard")))


def test_gradient_accumulation_gives_the_same_updates(tiny_data, tmp_path):
    """AR has no noise, so 1 x 8, 2 x 4 and 4 x 2 (accumulation steps x micro batch) must follow the
    same trajectory: the update is the token mean over the global batch however it is split."""
    trajectories = []
    for micro in (8, 4, 2):
        out = str(tmp_path / f"micro{micro}")
        cfg = load_config(RunConfig, TINY_CONFIG, micro_overrides(tiny_data, max_steps=3, micro_batch_size=micro)
                          + ["objective.name=ar"])
        train(cfg, out, show_progress=False)
        # the gradient norm (before clipping) checks the scale too, which Adam alone would hide
        trajectories.append([v for r in read_metrics(out) if "loss" in r for v in (r["loss"], r["grad_norm"])])
    assert len(trajectories[0]) == 6 and trajectories[0][0] != trajectories[0][4]
    for other in trajectories[1:]:
        assert other == pytest.approx(trajectories[0], abs=1e-5)
