"""Writing the CA's files: complete or absent, with their final mode from the first byte.

Every file is written under a temporary name in the same directory and then moved into place,
so a crash never leaves half a key or half a CRL behind. The mode is given to `os.open`
when the file is created: a private key is never readable by anyone else, not even for the
moment between a create and a later chmod.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

PRIVATE = 0o600
PUBLIC = 0o644


def _write_temporary(path: Path, data: bytes, mode: int) -> Path:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def _sync_directory(directory: Path) -> None:
    # The rename itself must survive a power cut, not just the file's bytes.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create(path: Path, data: bytes, mode: int) -> None:
    """Write a new file; FileExistsError if `path` exists (nothing is ever overwritten)."""
    tmp = _write_temporary(path, data, mode)
    try:
        # link() fails when the target exists, where rename() would silently replace it.
        os.link(tmp, path)
    finally:
        tmp.unlink()
    _sync_directory(path.parent)


def replace(path: Path, data: bytes, mode: int) -> None:
    """Write or atomically replace a file: readers see the old or the new one, never a mix."""
    tmp = _write_temporary(path, data, mode)
    try:
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _sync_directory(path.parent)
