"""Run folders: one writer at a time (a lock), no dead ends (a run that stopped before its first
checkpoint starts over; --fresh; a dangling `latest`), and output paths checked before any work."""
import json
import os
import shutil

import pytest

from diffmamba.cli import main
from diffmamba.core.errors import UserError
from diffmamba.core.runlock import FolderLock

from reliability_helpers import checkpoint_dir, error_lines, train_command


def listing(folder):
    return sorted((os.path.relpath(os.path.join(root, f), folder), os.path.getsize(os.path.join(root, f)))
                  for root, _, files in os.walk(folder) for f in files if f != ".lock")


def logged_steps(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r["step"] for r in map(json.loads, f) if "loss" in r]


def test_a_second_lock_on_a_folder_is_refused_until_the_first_is_released(tmp_path):
    folder = str(tmp_path / "out")
    with FolderLock(folder, "training run"):
        with pytest.raises(UserError, match=r"out is in use by another training run \(process \d+"):
            FolderLock(folder, "training run").acquire()
        open(os.path.join(folder, "kept"), "w").close()
    with FolderLock(folder, "training run"):
        pass
    assert os.path.exists(os.path.join(folder, "kept"))
    with FolderLock(str(tmp_path / "unused"), "evaluation"):
        pass
    assert not os.path.exists(tmp_path / "unused")  # a refused command leaves no folder behind


def test_train_into_a_folder_another_run_holds_is_one_line_and_changes_nothing(run_copy, micro_data, capsys):
    before = listing(run_copy)
    with FolderLock(run_copy, "training run"):
        code = main(train_command(run_copy, micro_data, "--resume", "--max-steps", "3"))
    err = capsys.readouterr().err
    assert code == 2 and "is in use by another training run" in error_lines(err)[0]
    assert listing(run_copy) == before


def test_eval_into_a_folder_another_eval_holds_is_refused(run_copy, tmp_path, capsys):
    out = str(tmp_path / "eval")
    with FolderLock(out, "evaluation"):
        code = main(["eval", "likelihood", "--checkpoint", run_copy, "--out", out, "--device", "cpu"])
    assert code == 2 and "is in use by another evaluation" in error_lines(capsys.readouterr().err)[0]


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_that_stopped_before_its_first_checkpoint_starts_over(run_copy, micro_data, capsys, resume):
    """A NaN at step 2 or a kill in the first minutes leaves config.yaml and metrics, no checkpoint:
    running again, with or without --resume, starts over instead of pointing at the other flag."""
    shutil.rmtree(os.path.join(run_copy, "checkpoints"))
    shutil.rmtree(os.path.join(run_copy, "final"))
    code = main(train_command(run_copy, micro_data, *(["--resume"] if resume else [])))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "stopped before its first checkpoint; starting it over" in captured.out
    assert logged_steps(run_copy) == [1, 2]


def test_fresh_deletes_the_run_and_starts_over(run_copy, micro_data, capsys):
    code = main(train_command(run_copy, micro_data))
    assert code == 2 and "pass --resume to continue it, --fresh to delete it" in error_lines(capsys.readouterr().err)[0]
    code = main(train_command(run_copy, micro_data, "--fresh", "--resume"))
    assert code == 2 and "contradict" in error_lines(capsys.readouterr().err)[0]
    open(os.path.join(run_copy, "notes.txt"), "w").close()  # not ours: --fresh leaves it
    leftover = os.path.join(run_copy, ".metrics.jsonl.tmp4242")  # a temporary file a crash left (core.io)
    open(leftover, "w").close()
    assert main(train_command(run_copy, micro_data, "--fresh", "--max-steps", "1")) == 0
    assert logged_steps(run_copy) == [1] and os.path.exists(os.path.join(run_copy, "notes.txt"))
    assert not os.path.exists(leftover)
    assert sorted(os.listdir(os.path.join(run_copy, "checkpoints"))) == ["latest", "step_0000001"]


def test_a_dangling_latest_falls_back_to_the_newest_step_folder(run_copy):
    from diffmamba.model_folder import find_model_dir

    shutil.rmtree(os.path.join(run_copy, "final"))
    with open(os.path.join(run_copy, "checkpoints", "latest"), "w") as f:
        f.write("step_0009999\n")
    assert find_model_dir(run_copy) == checkpoint_dir(run_copy)


@pytest.mark.parametrize("command", ["train", "eval", "tokenizer"])
def test_an_out_that_is_a_file_is_refused_before_any_work(micro_data, tmp_path, capsys, command):
    out = tmp_path / "taken"
    out.write_text("keep me")
    argv = {"train": train_command(str(out), micro_data),
            "eval": ["eval", "likelihood", "--checkpoint", str(tmp_path), "--out", str(out), "--device", "cpu"],
            "tokenizer": ["tokenizer", "train", "--corpus", micro_data[0], "--vocab-size", "300", "--out", str(out)]}
    assert main(argv[command]) == 2
    assert "is an existing file, not a folder" in error_lines(capsys.readouterr().err)[0]
    assert out.read_text() == "keep me"
