"""Atomic file and folder writes, and the one JSON reader / writer.

A reader never sees half a file: every file is written under a hidden temporary name in the same
folder and renamed onto the real one (``os.replace`` is atomic on one filesystem). Several ranks
may write the same file: each uses its own temporary name (pid) and the last rename wins, with
identical content. ``durable=True`` also fsyncs the file and its folder (checkpoints: a crash
after the rename must not lose the data).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Any, Callable, Iterator, Optional

import yaml


def temporary_name(path: str) -> str:
    """A hidden sibling of ``path`` private to this process (``.name.tmp<pid>``)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp{os.getpid()}")


def fsync_path(path: str) -> None:
    """fsync a file or a folder (a folder's fsync makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str, durable: bool = False) -> Iterator[str]:
    """Yield a temporary path to write ``path`` through (by any writer, e.g. safetensors); renamed
    onto ``path`` on success, removed on error."""
    tmp = temporary_name(path)
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    if durable:
        fsync_path(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", durable: bool = False, **open_kwargs):
    """``open(path, mode)`` through a temporary file that replaces ``path`` when the block ends."""
    with atomic_path(path, durable) as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())


def write_text(path: str, text: str, durable: bool = False) -> None:
    with atomic_open(path, "w", durable=durable, encoding="utf-8") as f:
        f.write(text)


def write_json(path: str, value: Any, *, indent: int = 2, sort_keys: bool = False,
               default: Optional[Callable[[Any], Any]] = None, durable: bool = False) -> None:
    """``value`` as JSON (a trailing newline; NaN and inf written as JSON's usual extensions)."""
    with atomic_open(path, "w", durable=durable, encoding="utf-8") as f:
        json.dump(value, f, indent=indent, sort_keys=sort_keys, default=default, allow_nan=True)
        f.write("\n")


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_yaml(path: str, value: Any) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(value, f, sort_keys=False)


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def replace_tree(src: str, dst: str) -> None:
    """Move the finished folder ``src`` onto ``dst`` (replacing an older one) after fsyncing it."""
    for name in os.listdir(src):
        fsync_path(os.path.join(src, name))
    fsync_path(src)
    if os.path.exists(dst):
        stale = f"{dst}.old-{os.getpid()}"
        os.rename(dst, stale)
        os.rename(src, dst)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.rename(src, dst)
    fsync_path(os.path.dirname(os.path.abspath(dst)))


@contextlib.contextmanager
def staged_tree(final_dir: str) -> Iterator[str]:
    """A private folder to build ``final_dir`` in. On success it is renamed into place (if another
    process published first, theirs is kept: both built the same content); on error it is removed."""
    tmp_dir = f"{final_dir}.tmp{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    try:
        yield tmp_dir
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    try:
        os.rename(tmp_dir, final_dir)
    except OSError:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if not os.path.isdir(final_dir):
            raise
