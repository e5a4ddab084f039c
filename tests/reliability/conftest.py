"""Fixtures of the reliability tests: the training tests' micro corpus and tokenizer, and one finished
micro run whose folder the tests copy and damage."""
import os
import shutil

import pytest

from reliability_helpers import train_command, write_corpus


@pytest.fixture(scope="session")
def micro_data(tmp_path_factory):
    """(corpus file, tokenizer folder, cache folder), as tests/train's tiny_data."""
    from diffmamba.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("reliability-data")
    corpus = str(root / "corpus.txt")
    write_corpus(corpus, paragraphs=120)
    with open(corpus) as f:
        texts = [p for p in f.read().split("\n\n") if p.strip()]
    tokenizer_dir = str(root / "tokenizer")
    train_bpe(texts, vocab_size=300, show_progress=False).save(tokenizer_dir)
    return corpus, tokenizer_dir, str(root / "cache")


@pytest.fixture(scope="session")
def finished_run(micro_data, tmp_path_factory):
    """A run folder after 2 micro steps: checkpoints/step_0000002 (+ latest), final/, metrics."""
    from diffmamba.cli import main

    out = str(tmp_path_factory.mktemp("finished") / "run")
    assert main(train_command(out, micro_data)) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A private copy of the finished run to damage."""
    out = str(tmp_path / "run")
    shutil.copytree(finished_run, out)
    return out
