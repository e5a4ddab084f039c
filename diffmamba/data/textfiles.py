"""One reader for local text files, shared by ``data prepare`` / ``train`` / ``tokenizer train``
(through diffmamba/data/sources.py) and ``eval --data``: the same files are accepted or refused
everywhere, with one line naming the file and the problem.

``check_text_file`` streams a file in 1 MiB pieces (never holding it whole) and refuses it when
it is not UTF-8 (naming the byte offset), holds NUL bytes (binary), holds no text at all, or has a
single document (line / paragraph / file, by the unit it is read in) so large that tokenising it
would pass the memory limit (diffmamba/core/budget.py). ``iter_documents`` then streams the documents.
"""
from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import os
from typing import BinaryIO, Iterator

from diffmamba.core import budget
from diffmamba.core.errors import UserError

CHUNK = 1 << 20
SEPARATORS = {"line": b"\n", "paragraph": b"\n\n", "document": None}
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _open_binary(path: str) -> BinaryIO:
    opener = _OPENERS.get(os.path.splitext(path)[1].lower(), open)
    return opener(path, "rb")


def checkable(path: str) -> bool:
    """Text-like files this module can read (Parquet and .zst are left to their own loaders)."""
    return not path.lower().endswith((".parquet", ".zst"))


def check_text_file(path: str, unit: str, require_text: bool = True) -> bool:
    """Raise a UserError if ``path`` is not usable UTF-8 text (see the module docstring); returns
    whether it holds any text (an empty file is an error only with ``require_text``)."""
    separator = SEPARATORS[unit]
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset, start, longest, has_text = 0, 0, 0, False
    carry = b""
    try:
        with _open_binary(path) as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                nul = chunk.find(b"\0")
                if nul != -1:
                    raise UserError(f"{path} is a binary file (NUL byte at offset {offset + nul}), not text; "
                                    "point the data at UTF-8 text files")
                try:
                    text = decoder.decode(chunk)
                except UnicodeDecodeError as e:
                    raise UserError(f"{path} is not UTF-8 text (undecodable byte at offset {offset + e.start}); "
                                    "convert it, e.g. `iconv -f latin1 -t utf-8 FILE > FILE.utf8`, or leave it "
                                    "out") from None
                has_text = has_text or bool(text.strip())
                if separator is not None:
                    data, base = carry + chunk, offset - len(carry)
                    i = data.find(separator)
                    while i != -1:
                        longest = max(longest, base + i - start)
                        start = base + i + len(separator)
                        i = data.find(separator, i + len(separator))
                    carry = data[len(data) - len(separator) + 1:] if len(separator) > 1 else b""
                offset += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text (it ends inside a multi-byte character); convert or "
                        "repair it, or leave it out") from None
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror or e}); check the file and its permissions") from None
    if not has_text and require_text:
        raise UserError(f"{path} is empty (no text{' after ' + str(offset) + ' bytes of whitespace' if offset else ''})"
                        "; add text to it or leave it out")
    longest = max(longest, offset - start)
    budget.require(longest * budget.BYTES_PER_TEXT_BYTE,
                   f"{path} holds a single {unit} of {budget.gb(longest)}; tokenising it",
                   "split the text into smaller documents (blank lines between paragraphs)", has_flag=False)
    return has_text


def iter_documents(path: str, unit: str) -> Iterator[str]:
    """The non-empty, stripped documents of a checked file, streamed."""
    separator = {"line": "\n", "paragraph": "\n\n", "document": None}[unit]
    with _open_binary(path) as raw, codecs.getreader("utf-8")(raw) as f:
        if separator is None:
            text = f.read().strip()
            if text:
                yield text
            return
        if unit == "line":
            for line in f:
                if line.strip():
                    yield line.strip()
            return
        lines: list[str] = []
        for line in f:
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines).strip()
                lines = []
        if lines:
            yield "".join(lines).strip()
