"""Where and with what a result was made: versions, host, device, time, the command; and the
paths a result records, made relative to the project root so that a committed result names no
folder of the machine that made it."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import socket
import sqlite3
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path

import torch

import search

# The folder holding pyproject.toml: a path inside it is recorded relative to it.
ROOT = Path(search.__file__).resolve().parent.parent
_PACKAGES = ("search", "space")  # python -m <package>.<module>


def versions() -> dict[str, str]:
    # From the installed metadata: importing torchvision just to read its version costs seconds.
    return {
        "budget_nas": search.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _installed("torchvision"),
        "optuna": _installed("optuna"),
    }


def _installed(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def device_name(device: torch.device) -> str:
    """'cpu (8 threads)' or the GPU's marketing name, 'NVIDIA H100 80GB HBM3' say."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def machine(device: str = "auto") -> str:
    """The machine in words, for a result's README: CPU model and cores, memory, and the GPU
    when ``device`` may use one: 'AMD EPYC 7B13, 2 cores, 23 GB; no GPU used'."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        memory = f", {kib / 2**20:.0f} GB"
    except (OSError, StopIteration, ValueError):
        pass
    text = f"{cpu}, {os.cpu_count()} cores{memory}"
    if device != "cpu" and torch.cuda.is_available():
        return f"{text}; GPU {torch.cuda.get_device_name(0)}"
    return f"{text}; no GPU used"


def host() -> str:
    return socket.gethostname()


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def command_line() -> str:
    """How this process was started, as typed from the project root: ``python -m
    search.campaign --config configs/campaign/cpu-400k.toml`` (``-m`` leaves the module's full
    path in ``sys.argv[0]``), paths inside the project root relative to it, any database
    password replaced by ***."""
    from search.storage import redact

    words = [sys.executable.rsplit("/", 1)[-1], *_program(sys.argv[0] if sys.argv else "")]
    words += [_portable_word(w) for w in sys.argv[1:]]
    return " ".join(redact(w) if "://" in w else w for w in words)


def _program(argv0: str) -> list[str]:
    """``sys.argv[0]``: a module of the project's packages as ``-m search.run``, else the path."""
    path = Path(argv0)
    if path.suffix == ".py":
        try:
            parts = path.resolve().relative_to(ROOT).with_suffix("").parts
        except (OSError, ValueError):
            parts = ()
        if len(parts) > 1 and parts[0] in _PACKAGES:
            return ["-m", ".".join(parts[:-1] if parts[-1] == "__main__" else parts)]
    return [_portable_word(argv0)] if argv0 else []


def portable_path(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the project root when it is an absolute path inside it
    (``/home/me/budget-nas/data/cifar10-jpeg`` -> ``data/cifar10-jpeg``); any other path as it
    is, a relative one included. What a result records, so that it reads the same on every
    machine."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        return text
    try:
        inside = Path(os.path.normpath(text)).relative_to(ROOT)
    except ValueError:
        return text
    return inside.as_posix() if inside.parts else "."


def portable_command(command: str) -> str:
    """A recorded command with each path, ``--flag=path`` or ``sqlite:////path`` in it made
    portable (``portable_path``)."""
    return " ".join(_portable_word(w) for w in command.split())


def _portable_word(word: str) -> str:
    """One word of a command: a path, ``--flag=path`` or ``sqlite:////path`` made portable."""
    for prefix in ("sqlite:///", "journal:///"):
        if word.startswith(prefix + "/"):
            return prefix + portable_path(word[len(prefix) :])
    flag, eq, value = word.partition("=")
    if eq and flag.startswith("--"):
        return f"{flag}={portable_path(value)}"
    return portable_path(word)


def locate(path: str) -> str:
    """A path that a result recorded, as this process can open it: a relative one (recorded
    relative to the project root) that does not exist from the working directory but does under
    the project root is taken from there; anything else unchanged (``cifar10`` included)."""
    recorded = Path(path).expanduser()
    if recorded.is_absolute() or recorded.exists() or not (ROOT / recorded).exists():
        return path
    return str(ROOT / recorded)


def portable_text(text: str, prefixes: Mapping[str, str] | None = None) -> str:
    """``text`` with every absolute path under one of ``prefixes`` (absolute folder -> what
    replaces it, relative to the project root; default: the project root -> '') rewritten:
    ``/root/nas/data/x`` -> ``data/x`` and ``/root/nas`` alone -> ``.``. A longer prefix wins;
    ``/root/nas2`` is not under ``/root/nas``."""
    mapping = {str(ROOT): ""} if prefixes is None else dict(prefixes)
    for old in sorted(mapping, key=len, reverse=True):
        new = mapping[old].rstrip("/")
        old = old.rstrip("/")
        if not old:
            continue

        def replace(match: re.Match[str], new: str = new) -> str:
            if match.group(1) == "/":
                return f"{new}/" if new else ""
            return new or "."

        # Not inside a longer name on either side: /x/root/nas or /root/nasty stay as they are.
        pattern = rf"(?<![\w.\-/]){re.escape(old)}(/|(?![\w.\-]))"
        text = re.sub(pattern, replace, text)
    return text


# The tables of an Optuna RDB storage whose values (JSON text) a run writes: study and trial
# attributes. Paths reach a study there (its data source, artifact folder, command, report note).
ATTRIBUTE_TABLES = (
    "study_user_attributes",
    "study_system_attributes",
    "trial_user_attributes",
    "trial_system_attributes",
)


def portable_database(path: Path, rewrite: Callable[[str], str] = portable_text) -> int:
    """Rewrite the study and trial attributes of an Optuna SQLite database in place with
    ``rewrite`` (applied to each value's JSON text); returns how many values changed. Only
    those rows are written: a database that holds no path is left byte for byte."""
    changed = 0
    with contextlib.closing(sqlite3.connect(path)) as con, con:
        for table in ATTRIBUTE_TABLES:
            rows = con.execute(f"SELECT rowid, value_json FROM {table}").fetchall()
            for rowid, value in rows:
                new = rewrite(value)
                if new != value:
                    con.execute(f"UPDATE {table} SET value_json = ? WHERE rowid = ?", (new, rowid))
                    changed += 1
    return changed
