"""Reading and writing the project's TOML files, with errors a user can act on."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import tomli_w

from space.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def load_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error is a ``UserError``."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file (expected a .toml file)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: TOML syntax error: {exc}") from None


def dumps_toml(data: dict[str, Any]) -> str:
    return tomli_w.dumps(data)
