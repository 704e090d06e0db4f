"""Data at rest is the service user's alone: the data dir and every directory under it 0700, every file 0600
(uploads, adapters, the ledger's journal and dead letters, the SQLite database with its -wal and -shm).

Two layers: each process that writes data (``serve``, ``worker``, the app's lifespan) runs with umask 077, so
whatever a library creates (an adapter's weights, a temp file) is private; and the places we create ourselves
ask for the private mode explicitly, and fix an existing path's mode, whatever the umask was."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


def keep_private() -> None:
    """From now on this process creates files 0600 and directories 0700."""
    os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """``path`` as a directory (made if missing, with its parents) that only this user may enter."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> None:
    """``path`` as a file only this user may read (created empty if missing)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    os.chmod(path, FILE_MODE)


def open_private(path: Path, mode: str = "wb") -> int:
    """A descriptor of ``path`` opened for writing (``"wb"``: truncated, ``"ab"``: appended), 0600 (also when it
    existed before with another mode)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
    descriptor = os.open(path, flags, FILE_MODE)
    os.fchmod(descriptor, FILE_MODE)
    return descriptor


def read_or_create_secret(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    """The secret kept in ``path``, else ``make()``'s, written there 0600 (the first of racing processes wins);
    and whether it was made just now."""
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = make()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:  # another process created it first
        return path.read_text().strip(), False
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret, True
