"""Text data: the built-in corpus, tokenizers, and packed datasets.

    from diffmamba.data import resolve_tokenizer, build_datasets, load_tokenizer
    tok = resolve_tokenizer(cfg.data)
    train, validation = build_datasets(cfg.data, tok)

Names are imported on first use, so ``from diffmamba.data import load_tokenizer`` (sampling)
does not pay for importing Hugging Face ``datasets``.
"""
import importlib

_EXPORTS = {
    "Tokenizer": "tokenizer", "load_tokenizer": "tokenizer", "train_bpe": "tokenizer",
    "build_datasets": "datasets", "resolve_tokenizer": "datasets", "PackedRows": "datasets",
    "StreamingRows": "datasets", "build_corpus": "corpus",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"diffmamba.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'diffmamba.data' has no attribute {name!r}")
