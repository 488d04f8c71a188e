"""Settings of the commands: typed dataclasses, filled from defaults < a TOML file < flags.

A TOML preset has one table per dataclass (``[search]``, ``[data]``, ``[train]``); an unknown
table or key, or a value of the wrong type, is a ``UserError`` naming the file, the key, the
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from space._io import check_path
from space._toml import load_toml
from space.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DataConfig:
    """Which images, and how they are split."""

    source: str = "cifar10"  # cifar10, cifar100, an image-folder tree or a .tar/.tar.gz of one
    # Validation images carved from train (class-balanced, seeded); None follows the data: 10%
    # of the training images, at most 5,000 (CIFAR-10: 5,000), at least one per class.
    val_size: int | None = None
    subset: int | None = None  # keep the first N training images per class (quick CPU runs)
    image_size: int | None = None  # resize every image to this square side; None keeps sizes
    split_seed: int = 0  # seed of the validation split (kept apart from the training seed)


def from_mapping(cls: type[T], data: Mapping[str, Any], *, where: str) -> T:
    """Build dataclass ``cls`` from ``data``, checking keys and value types against its fields.

    Values convert where it is lossless (an int for a float field); anything else is an error.
    Field validation of the dataclass itself (``__post_init__``) runs as usual.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            raise UserError(f"unknown key {key!r} in {where}; allowed keys: {', '.join(names)}")
        values[key] = _convert(value, hints[key], f"{where}.{key}")
    try:
        return cls(**values)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0])
    if origin is tuple:  # tuple[X, ...]: a TOML list of X
        item = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list, but got {value!r}")
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise UserError(
                f"{where} must be one of {', '.join(map(str, allowed))}, but got {value!r}"
            )
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, but got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, but got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be a number, but got {value!r}")
        if not math.isfinite(value):
            raise UserError(f"{where} must be a finite number, but got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, but got {value!r}")
        return value
    raise TypeError(f"unsupported field type {hint!r} at {where}")  # a bug of ours


def load_sections(path: Path, sections: Mapping[str, type]) -> dict[str, dict[str, Any]]:
    """The tables of a TOML preset, each checked against its dataclass (not yet merged).

    Returns the raw key-values per table name, validated; tables left out are empty.
    """
    check_path(Path(path), what=f"--config {str(path)[:80]!r}")
    raw = load_toml(path)
    out: dict[str, dict[str, Any]] = {name: {} for name in sections}
    for name, table in raw.items():
        if name not in sections:
            raise UserError(
                f"{path}: unknown table or key {name!r}; allowed tables: "
                f"{', '.join('[' + s + ']' for s in sections)}"
            )
        if not isinstance(table, Mapping):
            raise UserError(f"{path}: {name!r} must be a table [{name}], but got {table!r}")
        from_mapping(sections[name], table, where=f"{path} [{name}]")  # check now, merge later
        out[name] = dict(table)
    return out


def merge(cls: type[T], *layers: Mapping[str, Any], where: str) -> T:
    """Defaults of ``cls`` < each layer in order; a layer's None means 'not given'."""
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({k: v for k, v in layer.items() if v is not None})
    return from_mapping(cls, values, where=where)


def first_difference(recorded: Any, wanted: Any, where: str = "") -> tuple[str, Any, Any]:
    """(dotted key, recorded value, wanted value) of the first difference between two nested
    settings dicts (keys in sorted order), for messages such as 'train.epochs: 2 there, 3 now'."""
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        for key in sorted(set(recorded) | set(wanted)):
            if recorded.get(key) != wanted.get(key):
                path = f"{where}.{key}".lstrip(".")
                return first_difference(recorded.get(key), wanted.get(key), path)
    return where or "settings", recorded, wanted


def resolve_device(text: str) -> torch.device:
    """``auto`` (CUDA when visible, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    text = text.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {text}: no CUDA GPU is visible here (torch {torch.__version__}, "
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                "use --device cpu or auto"
            )
        device = torch.device(text)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        return device
    raise UserError(f"--device must be auto, cpu, cuda or cuda:N, but got {text!r}")


def configure_torch(device: torch.device, *, cudnn_benchmark: bool = True) -> None:
    """Process-wide settings for speed, set by entry points (never at import).

    ``cudnn_benchmark``: time cuDNN's algorithms for every new convolution shape and keep the
    fastest (fixed shapes per model); it costs a moment per new network, which many short search
    trials pay again and again, hence the search's own setting.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
