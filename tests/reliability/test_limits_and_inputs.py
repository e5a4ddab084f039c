"""Memory limits refused before allocation, and bad inputs (damaged model files, undecodable or
empty data, an existing --output, split overrides) refused in one line with exit code 2."""
import os
import re
import shutil

import pytest

from diffmamba.core import budget
from diffmamba.cli import main

from reliability_helpers import error_lines


@pytest.fixture
def final_model(finished_run, tmp_path):
    folder = str(tmp_path / "final")
    shutil.copytree(os.path.join(finished_run, "final"), folder)
    return folder


def sample(capsys, *argv):
    code = main(["sample", "--no-progress", "--device", "cpu", *argv])
    return code, capsys.readouterr()


@pytest.mark.parametrize("request_args", [["--prompt", "a [MASK:900000] b"], ["--length", "5000000"],
                                          ["--length", "20000", "--num-samples", "4000"]])
def test_a_huge_sampling_request_is_refused_before_the_model_is_loaded(final_model, capsys, monkeypatch,
                                                                       request_args):
    import diffmamba.cli.sample as sample_command

    monkeypatch.setenv(budget.ENV, "4")
    monkeypatch.setattr(sample_command, "load_checkpoint", lambda *a, **k: pytest.fail("loaded before the check"))
    code, captured = sample(capsys, "--checkpoint", final_model, *request_args)
    line = error_lines(captured.err)[0]
    assert code == 2 and "above the limit of 4.0 GB (DIFFMAMBA_MAX_MEMORY_GB)" in line
    assert "--max-memory-gb N or DIFFMAMBA_MAX_MEMORY_GB=N" in line


def test_the_flag_overrides_the_environment_and_bad_limits_are_one_line(final_model, capsys, monkeypatch):
    monkeypatch.setenv(budget.ENV, "1000")
    code, captured = sample(capsys, "--checkpoint", final_model, "--length", "100000", "--max-memory-gb", "0.5")
    assert code == 2 and "limit of 512.0 MB (--max-memory-gb)" in error_lines(captured.err)[0]
    monkeypatch.setenv(budget.ENV, "lots")
    code, captured = sample(capsys, "--checkpoint", final_model, "--length", "8")
    assert code == 2 and "DIFFMAMBA_MAX_MEMORY_GB='lots' is not a positive number" in error_lines(captured.err)[0]


def test_the_estimate_grows_with_the_request_and_ar_needs_no_logits_per_position():
    small = budget.sampling_bytes("diffusion", 1, 1000, 0, 300, 32)
    assert budget.sampling_bytes("diffusion", 2, 1000, 0, 300, 32) > small * 1.9
    assert budget.sampling_bytes("diffusion", 1, 1_000_000, 0, 300, 32) > 10 * budget.GB
    assert budget.sampling_bytes("ar", 1, 1_000_000, 10, 300, 32) < budget.GB
    assert budget.sampling_bytes("block", 1, 1_000_000, 0, 300, 32, block_size=16) < budget.GB


@pytest.mark.parametrize("damage", ["truncated", "empty", "random"])
def test_a_damaged_model_file_is_one_line_for_sample_and_eval(final_model, tmp_path, capsys, damage):
    weights = os.path.join(final_model, "model.safetensors")
    size = os.path.getsize(weights)
    with open(weights, "r+b") as f:
        if damage == "truncated":
            f.truncate(size // 2)
        elif damage == "empty":
            f.truncate(0)
        else:
            f.write(os.urandom(size))
    code, captured = sample(capsys, "--checkpoint", final_model, "--length", "8")
    assert code == 2 and f"cannot load the model in {final_model}" in error_lines(captured.err)[0]
    code = main(["eval", "likelihood", "--checkpoint", final_model, "--out", str(tmp_path / "e"), "--device", "cpu"])
    assert code == 2 and "cannot load the model" in error_lines(capsys.readouterr().err)[0]


def test_an_existing_output_is_refused_before_sampling(final_model, tmp_path, capsys):
    output = tmp_path / "samples.jsonl"
    output.write_text("earlier samples\n")
    code, captured = sample(capsys, "--checkpoint", final_model, "--length", "8", "--output", str(output))
    assert code == 2 and "already exists; pass --overwrite" in error_lines(captured.err)[0]
    assert "=== sample" not in captured.out and output.read_text() == "earlier samples\n"
    code, captured = sample(capsys, "--checkpoint", final_model, "--length", "8", "--output", str(output),
                            "--overwrite", "--steps", "2")
    assert code == 0 and output.read_text().startswith("{")


BAD_FILES = {"latin1": ("café au lait\n\nmore\n".encode("latin-1"), "is not UTF-8 text (undecodable byte at offset 3)"),
             "binary": (bytes(range(256)) * 4, "is a binary file"),
             "empty": (b"", "is empty"),
             "whitespace": (b"  \n\n \t\n", "is empty")}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_data_files_are_named_the_same_way_everywhere(finished_run, tmp_path, capsys, kind):
    content, message = BAD_FILES[kind]
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    commands = [["data", "prepare", "--corpus", str(path), "--tokenizer", os.path.join(finished_run, "final"),
                 "--cache-dir", str(tmp_path / "cache")],
                ["tokenizer", "train", "--corpus", str(path), "--vocab-size", "300", "--out", str(tmp_path / "tok")],
                ["eval", "likelihood", "--checkpoint", finished_run, "--data", str(path), "--out", str(tmp_path / "e"),
                 "--device", "cpu"]]
    for argv in commands:
        assert main(argv) == 2, argv
        line = error_lines(capsys.readouterr().err)[0]
        assert f"{path} {message}" in line, (argv, line)
    assert not os.path.exists(tmp_path / "tok")


def test_a_document_too_large_for_the_memory_limit_is_refused_naming_file_and_limit(tmp_path, monkeypatch, capsys):
    from diffmamba.data import textfiles

    monkeypatch.setenv(budget.ENV, str(1 / 1024))  # 1 MB: a 100 KB line would need ~4 MB to tokenise
    monkeypatch.setattr(textfiles, "CHUNK", 4096)  # the longest line spans many reads
    path = tmp_path / "big.txt"
    path.write_text("short line\n" + "word " * 20000 + "\nshort again\n")
    with pytest.raises(Exception, match=re.escape(f"{path} holds a single line of 0.1 MB")) as info:
        textfiles.check_text_file(str(path), "line")
    assert "above the limit of 1.0 MB (DIFFMAMBA_MAX_MEMORY_GB)" in str(info.value)
    assert "raise the limit with DIFFMAMBA_MAX_MEMORY_GB=N" in str(info.value)
    path.write_text(("short line\n" * 20000))  # the same size in short lines is fine
    assert textfiles.check_text_file(str(path), "line")


def test_overrides_may_sit_between_options():
    import argparse

    from diffmamba.cli.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["train.lr=1e-3", "--max-steps", "2", "--out", "X", "model.d_model=64", "--train.seed",
                              "3", "--resume"])
    assert args.overrides == ["train.lr=1e-3", "model.d_model=64", "train.seed=3"]
    assert args.max_steps == 2 and args.out == "X" and args.resume


def test_the_readme_two_process_command_splits_its_batch():
    from diffmamba.config import RunConfig, load_config
    from diffmamba.train.loop import batch_layout

    from reliability_helpers import TINY_CONFIG

    readme = open(os.path.join(os.path.dirname(TINY_CONFIG), os.pardir, "README.md")).read()
    command = re.search(r"--num_processes 2 scripts/train.py (.*?)#", readme.replace("\\\n", " "), re.S).group(1)
    tokens = command.split()
    config = tokens[tokens.index("--config") + 1]
    overrides = [t for t in tokens if "=" in t and not t.startswith("-")]
    cfg = load_config(RunConfig, os.path.join(os.path.dirname(TINY_CONFIG), os.pardir, config), overrides)
    assert batch_layout(cfg, 2).accumulation_steps >= 1


def test_quickstart_config_is_found_from_any_folder(tmp_path, monkeypatch):
    from diffmamba.cli.quickstart import resolve_config_path

    monkeypatch.chdir(tmp_path)
    assert os.path.isfile(resolve_config_path("configs/tiny.yaml"))
    (tmp_path / "mine.yaml").write_text("train: {max_steps: 1}\n")
    assert resolve_config_path("mine.yaml") == "mine.yaml"
