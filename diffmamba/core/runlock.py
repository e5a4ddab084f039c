"""One writer per output folder: an exclusive ``fcntl.flock`` on ``FOLDER/.lock`` held for as long as
a training run or an evaluation writes there.

Two ``train --resume`` into one run folder would otherwise train side by side and delete each
other's checkpoints; two evaluations into one ``--out`` would overwrite each other's results. The
lock is advisory and belongs to the open file: the kernel drops it when the process ends, however it
ends (kill -9 included), so a stale lock file never blocks anyone. The file keeps the holder's pid and
command only to name it in the error.
"""
from __future__ import annotations

import fcntl
import os
import sys
from typing import Optional

from diffmamba.core.errors import UserError

LOCK_NAME = ".lock"


class FolderLock:
    """``with FolderLock(folder, what):`` holds the lock, or raises UserError if another process does."""

    def __init__(self, folder: str, what: str):
        self.folder, self.what = folder, what
        self.path = os.path.join(folder, LOCK_NAME)
        self._fd: Optional[int] = None
        self._created = False

    def acquire(self) -> "FolderLock":
        self._created = not os.path.exists(self.folder)
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UserError(f"{self.folder} is in use by another {self.what}{holder}; wait for it to finish "
                            "(or stop it), or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {' '.join(sys.argv)[:500]}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            # A folder this lock created and nothing else used (the command failed before writing) is
            # removed again, so a refused command leaves no trace.
            if self._created and os.listdir(self.folder) == [LOCK_NAME]:
                os.remove(self.path)
                os.rmdir(self.folder)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 600, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    pid, _, command = text.partition(" ")
    return f" (process {pid}: {command[:120]})" if pid.isdigit() else ""
