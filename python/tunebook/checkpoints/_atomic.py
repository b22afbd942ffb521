"""Crash-safe file writes: temporary file, flush + fsync, rename, fsync of the directory.

A rename within one directory is atomic on POSIX file systems, so a reader sees either
the old file or the complete new one. The fsyncs make that order durable: the data
reaches the disk before the name points at it, and the new name before anything that
depends on it (the next index) is written.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

#: Prefix of every temporary file this package writes; reopening a directory deletes
#: leftovers with this prefix (and nothing else it did not write itself).
TMP_PREFIX = ".tunebook-tmp-"


def fsync_directory(directory: Path) -> None:
    """Makes renames and creations inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_path(directory: Path, suffix: str) -> Path:
    return directory / f"{TMP_PREFIX}{uuid.uuid4().hex}{suffix}"


def atomic_write(
    path: Path,
    write: Callable[[IO[bytes]], Any],
    *,
    fsync: bool = True,
    before_rename: Callable[[], None] | None = None,
) -> None:
    """Writes ``path`` atomically by calling ``write(file)`` on a temporary file.

    Args:
        path: the final path.
        write: writes the content to the binary file object it is given.
        fsync: flush the data and the directory to disk (turn off only for tests or
            throw-away runs; a crash may then lose the file).
        before_rename: called after the data is durable, before the rename (fault
            injection in tests).
    """
    tmp = temporary_path(path.parent, path.suffix)
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            if fsync:
                os.fsync(file.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_directory(path.parent)


def atomic_write_json(path: Path, document: Any, *, fsync: bool = True) -> None:
    """Writes ``document`` as JSON to ``path`` atomically (NaN and inf allowed)."""
    data = json.dumps(document, indent=1, sort_keys=True, allow_nan=True).encode()
    atomic_write(path, lambda file: file.write(data), fsync=fsync)
