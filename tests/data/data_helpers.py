"""Helpers for the data tests. Ids under the ``word_tokenizer`` fixture: word "w<n>" -> n + 2, EOS = 0."""
import json

WORDS = ["<|endoftext|>", "[UNK]"] + [f"w{i}" for i in range(40)]
EOS = 0


def words(*numbers):
    """Text of the words w<n>."""
    return " ".join(f"w{n}" for n in numbers)


def ids(*numbers):
    """Ids of the words w<n>."""
    return [n + 2 for n in numbers]


def write_jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "meta": i}) + "\n" for i, t in enumerate(texts)))
    return str(path)
