"""Atomic file writes: a file that must survive a crash is written to a temporary name, synced,
and renamed over the target, so a reader sees the old file or the new one, never half of one.

The temporary name says which process writes it (``.<name>.<pid>@<host>.<random>.tmp``), so a
later run can tell the leftover of a writer that was killed (``remove_stale_temporaries``) from a
file that another process is still writing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from space.errors import UserError

# A temporary file untouched for this long is a dead writer's, whoever wrote it: a live writer
# appends to its file continuously (a 185 MB cache is written in seconds).
STALE_AFTER = 3600.0  # seconds
_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[^@/]+)\.[A-Za-z0-9_]+\.tmp$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NEARLY_FULL = 1 << 20  # bytes free under which a failed write is taken for a full disk


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` to make the file under a temporary name, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}@{_host()}.", suffix=".tmp", dir=path.parent
    )
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
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        # Writers that are not Python's own (torch.save, safetensors, onnx) report a full disk
        # as a generic failure: name it for what it is.
        if isinstance(exc, Exception) and disk_full(exc) is None and _out_of_space(path.parent):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise


def _out_of_space(folder: Path) -> bool:
    """Whether the file system of ``folder`` has (next to) no room left for this user."""
    try:
        fs = os.statvfs(folder)
    except OSError:
        return False
    return fs.f_bavail * fs.f_frsize < _NEARLY_FULL or (fs.f_files > 0 and fs.f_favail == 0)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _host() -> str:
    """This host in a temporary file's name: a short hash of its name, so that a long host name
    (a cloud FQDN) cannot push a name past the file system's limit, and no '.', '@' or '/' in it
    breaks the name's parts."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12]


def remove_stale_temporaries(folder: Path, *, now: float | None = None) -> list[Path]:
    """Remove the temporary files that a killed writer left in ``folder``; returns them.

    A temporary file is stale when the process named in it ran on this host and is gone, or
    when nobody has written to it for ``STALE_AFTER`` seconds (a writer on another machine
    sharing the folder, or a name of an older version without the writer's pid). A file of a
    live writer is never touched: at worst a pid reused by another process keeps a leftover
    until the age rule takes it.
    """
    folder = Path(folder)
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    host = _host()
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        match = _TEMPORARY.match(entry.name)
        dead = bool(match) and match["host"] == host and not _pid_alive(int(match["pid"]))
        if dead or age > STALE_AFTER:
            try:
                os.unlink(entry.path)
            except OSError:
                continue
            removed.append(Path(entry.path))
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def disk_full(exc: BaseException) -> BaseException | None:
    """The "no space left" error behind ``exc`` (its causes and contexts included): an OSError
    ENOSPC or EDQUOT, SQLite's "database or disk is full", PostgreSQL's disk_full; else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL:
            return current
        text = str(current).lower()
        if "database or disk is full" in text or getattr(current, "sqlstate", None) == "53100":
            return current
        if "no space left on device" in text or "disk quota exceeded" in text:
            return current
        current = current.__cause__ or current.__context__ or getattr(current, "orig", None)
    return None


def disk_full_message(exc: BaseException, where: Path | str) -> str | None:
    """One line naming the full disk and the file that could not be written, or None when
    ``exc`` is not about a full disk. ``where``: the file or folder written, when ``exc`` does
    not name one itself."""
    full = disk_full(exc)
    if full is None:
        return None
    filename = getattr(full, "filename", None) if isinstance(full, OSError) else None
    target = filename or where
    reason = "no space left on device"
    if isinstance(full, OSError) and full.errno == errno.EDQUOT:
        reason = "disk quota exceeded"
    elif getattr(full, "sqlstate", None) == "53100":
        reason = "the database server's disk is full"
    return f"the disk is full: cannot write {target} ({reason})"


def check_path(path: Path, *, room: int = 0, what: str | None = None) -> None:
    """Fail when the system cannot take ``path``: a name longer than the file system allows
    (``room`` bytes kept free in the last name, for suffixes added to it later), or the whole
    longer than the system's path limit. ``what`` names it in the message (a flag, say)."""
    path = Path(path)
    label = what or str(path)[:80] + ("..." if len(str(path)) > 80 else "")
    name_max, path_max = _limits(path)
    encoded = os.fsencode(path)
    if len(encoded) >= path_max:
        raise UserError(
            f"{label}: the path is {len(encoded)} bytes long; this system allows at most "
            f"{path_max - 1}"
        )
    parts = path.parts
    for i, part in enumerate(parts):
        limit = name_max - (room if i == len(parts) - 1 else 0)
        size = len(os.fsencode(part))
        if size > limit:
            shown = part[:40] + "..."
            extra = (
                f" (less {room} for what is added to it)" if i == len(parts) - 1 and room else ""
            )
            raise UserError(
                f"{label}: the name {shown!r} is {size} bytes long; this file system allows "
                f"at most {limit}{extra}; choose a shorter one"
            )


def _limits(path: Path) -> tuple[int, int]:
    """(longest name, longest path) in bytes, from the nearest existing folder."""
    existing = os.path.abspath(path)
    while not os.path.isdir(existing) and existing != os.path.dirname(existing):
        existing = os.path.dirname(existing)
    try:
        return os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096


def check_writable(path: Path) -> None:
    """Fail before any work when ``path`` (a folder, or a file) cannot be written or created.

    Tries an anonymous temporary file in the nearest existing folder (nothing visible is left
    behind): permission bits alone say nothing for root or on read-only mounts.
    """
    path = Path(path)
    check_path(path)
    try:
        if path.is_file():
            if not os.access(path, os.W_OK):
                raise UserError(f"{path}: cannot write there (the file is read-only)")
            return
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise UserError(f"{path}: cannot write there ({existing} is not a folder)")
    except OSError as exc:  # a folder on the way that cannot be searched, say
        raise UserError(f"{path}: cannot write there ({exc.strerror})") from None
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
    check_path(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{path}: is a file; expected a folder (or a path to create one at)")
    check_writable(path)
