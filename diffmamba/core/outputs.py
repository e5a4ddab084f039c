"""Output paths checked before any long work: a run that trains for an hour and then cannot write its
result has lost that hour. Each check raises a UserError naming the flag, the problem and the fix."""
from __future__ import annotations

import os

from diffmamba.core.errors import UserError


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_out_dir(path: str, flag: str = "--out") -> None:
    """``path`` is (or can become) a folder this process can write into."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} is an existing file, not a folder; choose a folder path "
                        "(it is created if missing)")
    existing = _nearest_existing(path)
    if not os.path.isdir(existing):
        raise UserError(f"{flag} {path}: {existing} is a file, so the folder cannot be created; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {existing} is not writable by this user; choose a writable folder")


def check_out_file(path: str, flag: str, overwrite: bool = False) -> None:
    """``path`` can be written as a new file (an existing one only with ``overwrite``)."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a folder; give a file path")
    if os.path.exists(path) and not overwrite:
        raise UserError(f"{flag} {path} already exists; pass --overwrite to replace it, or choose another file")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path} is not writable by this user; choose another file")
    check_out_dir(os.path.dirname(os.path.abspath(path)), flag=f"{flag} {path}: the folder")
