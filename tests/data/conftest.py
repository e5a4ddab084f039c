"""Fixtures for the data tests: a tiny word-level tokenizer whose ids can be written by hand."""
import pytest
from data_helpers import WORDS


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """No data test may read or write the user's ~/.cache/diffmamba."""
    monkeypatch.setenv("DIFFMAMBA_CACHE", str(tmp_path_factory.mktemp("diffmamba-cache")))


@pytest.fixture
def word_tokenizer():
    """Word-level tokenizer: ``"w7"`` -> id 9 (= 7 + 2), EOS id 0, mask appended as id 42."""
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers

    from diffmamba.data.tokenizer import Tokenizer
    hf = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.add_special_tokens(["<|endoftext|>"])
    return Tokenizer(hf, "words")

