"""Rewrite committed campaign results so that they name no folder of the machine that made them.

    python scripts/portable_results.py                     # every folder in results/reference/
    python scripts/portable_results.py results/reference/cpu-400k --map /mnt/big/runs=results

Results made before ``search.provenance.portable_path`` recorded absolute paths: the data source,
the artifact folder, the command, the report folder in the dashboard note, the work folder.
Each becomes a path relative to the project root:

- the project root, this checkout's or the one a recorded command ran from (the folder above
  the ``search/campaign.py`` that ``python -m search.campaign`` leaves in ``sys.argv``): ``''``;
- the campaign's ``--results FOLDER``: ``results``; its ``--out FOLDER``:
  ``results/reference/<name>`` (both read from its recorded commands);
- ``--map OLD=NEW``: anything else;

and ``python search/campaign.py`` becomes ``python -m search.campaign``, the command as typed.
Text files and the study databases' attributes (``search.provenance.portable_database``) are
rewritten in place; nothing else changes, and a second run changes nothing.

Exit 0 when no absolute path is left, 1 when some is (each named: give ``--map`` for it), 2 on
bad input.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from search.provenance import ATTRIBUTE_TABLES, portable_database, portable_text
from space._cli import ArgumentParser
from space._io import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "reference"
TEXT_SUFFIXES = (".md", ".json", ".csv", ".toml", ".html", ".txt", ".log", ".journal")
# Where a machine's absolute paths start; a committed result holds none of them.
ABSOLUTE = re.compile(r"(?<![\w.:/-])/(?:work|root|home|tmp|Users)/[^\s\"'`)]*")
# A module of the project run as a file: what `python -m` left in sys.argv[0], root stripped.
_MODULE_FILE = re.compile(r"(?<![\w./-])(python[\d.]*) (?:\./)?((?:search|space)/\w+)\.py(?![\w.])")


def recorded_commands(folder: Path) -> list[str]:
    """The commands a result recorded: its campaign's and its sessions' (``campaign.json``),
    and each study database's ``command`` attribute."""
    commands = []
    with contextlib.suppress(OSError, ValueError):
        record = json.loads((folder / "campaign.json").read_text())
        commands.append(str(record.get("command", "")))
        commands += [str(s.get("command", "")) for s in record.get("sessions", [])]
    for db in sorted(folder.glob("*.db")):
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            rows = con.execute(
                "SELECT value_json FROM study_user_attributes WHERE key = 'command'"
            ).fetchall()
        commands += [json.loads(value) for (value,) in rows]
    return [c for c in commands if c]


def inferred_prefixes(folder: Path, commands: Iterable[str]) -> dict[str, str]:
    """Absolute folders the recorded ``commands`` name, and what each becomes: the root they
    ran from -> '', ``--results`` -> ``results``, ``--out`` -> ``results/reference/<folder>``."""
    prefixes = {}
    for command in commands:
        words = command.split()
        for i, word in enumerate(words):
            flag, eq, value = word.partition("=")
            if not eq:
                value = words[i + 1] if i + 1 < len(words) else ""
            if word.endswith("/search/campaign.py") and os.path.isabs(word):
                prefixes[word.removesuffix("/search/campaign.py")] = ""
            elif flag == "--results" and os.path.isabs(value):
                prefixes[value] = "results"
            elif flag == "--out" and os.path.isabs(value):
                prefixes[value] = f"results/reference/{folder.name}"
    return prefixes


def rewriter(prefixes: dict[str, str]) -> Callable[[str], str]:
    """The text rewrite: ``prefixes`` and this checkout's root made relative, then module
    files as ``python -m``."""
    mapping = {str(ROOT): "", **prefixes}

    def rewrite(text: str) -> str:
        text = portable_text(text, mapping)
        return _MODULE_FILE.sub(lambda m: f"{m[1]} -m {m[2].replace('/', '.')}", text)

    return rewrite


def rewrite_folder(folder: Path, extra: dict[str, str]) -> list[str]:
    """Rewrite one result folder in place; returns the files changed (database: rows)."""
    rewrite = rewriter({**inferred_prefixes(folder, recorded_commands(folder)), **extra})
    changed = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix == ".db":
            rows = portable_database(path, rewrite)
            if rows:
                changed.append(f"{path} ({rows} attribute(s))")
        elif path.suffix in TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8")
            new = rewrite(text)
            if new != text:
                write_text_atomic(path, new)
                changed.append(str(path))
    return changed


def absolute_paths(folder: Path) -> list[str]:
    """Every absolute path of a machine left in ``folder``: in its text files (any file that
    decodes as UTF-8) and in its study databases' attributes; '<file>: <path>' each."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix == ".db":
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
                for table in ATTRIBUTE_TABLES:
                    for key, value in con.execute(f"SELECT key, value_json FROM {table}"):
                        found += [f"{path} [{table} {key}]: {m}" for m in ABSOLUTE.findall(value)]
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a PNG, say
        found += [f"{path}: {m}" for m in ABSOLUTE.findall(text)]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python scripts/portable_results.py",
        description="Rewrite committed results so that every path in them is relative to the "
        "project root.",
    )
    p.add_argument(
        "folders", nargs="*", type=Path, help="result folders (default: results/reference/*)"
    )
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="also rewrite the absolute folder OLD as NEW (relative to the project root)",
    )
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    extra = {}
    for item in args.map:
        old, eq, new = item.partition("=")
        if not eq or not os.path.isabs(old) or os.path.isabs(new):
            p.error(f"--map wants /absolute/OLD=relative/NEW, but got {item!r}")
        extra[old] = new
    folders = args.folders or sorted(f for f in RESULTS.iterdir() if f.is_dir())
    for folder in folders:
        if not folder.is_dir():
            p.error(f"{folder}: no such result folder")
    left = []
    for folder in folders:
        for changed in rewrite_folder(folder, extra):
            print(f"rewrote {changed}")
        left += absolute_paths(folder)
    for line in left:
        print(f"absolute path left (give --map OLD=NEW for it): {line}", file=sys.stderr)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
