"""Atomic file writes: a file that must survive a crash is written to a temporary name, synced,
and renamed over the target, so a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from space.errors import UserError


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` to make the file under a temporary name, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        # mkstemp makes 0600, and some writers (safetensors) make the file anew, 0600 again:
        # give the finished file the usual permissions.
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def check_writable(path: Path) -> None:
    """Fail before any work when ``path`` (a folder, or a file) cannot be written or created.

    Tries an anonymous temporary file in the nearest existing folder (nothing visible is left
    behind): permission bits alone say nothing for root or on read-only mounts.
    """
    path = Path(path)
    if path.is_file():
        if not os.access(path, os.W_OK):
            raise UserError(f"{path}: cannot write there (the file is read-only)")
        return
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{path}: cannot write there ({existing} is a file, not a folder)")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UserError(
            f"{path}: cannot write there (cannot create files in {existing}: {exc.strerror})"
        ) from None


def check_writable_folder(path: Path) -> None:
    """``check_writable`` for a folder that results go into: a file of that name is an error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file; expected a folder (or a path to create one at)")
    check_writable(path)
