"""Fixtures of the training tests (helpers live in train_helpers.py)."""
import pytest

from train_helpers import write_corpus


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """(corpus file, tokenizer folder, cache folder)."""
    from diffmamba.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("train-data")
    corpus = str(root / "corpus.txt")
    write_corpus(corpus)
    with open(corpus) as f:
        texts = [p for p in f.read().split("\n\n") if p.strip()]
    tokenizer_dir = str(root / "tokenizer")
    train_bpe(texts, vocab_size=300, show_progress=False).save(tokenizer_dir)
    return corpus, tokenizer_dir, str(root / "cache")
