"""A trained model as one self-contained file: safetensors weights plus the architecture.

The safetensors metadata carries the genotype, the class names, the input shape and the
normalisation, so ``load_model`` rebuilds the exact network without Optuna, the study or the
search code, and ``search.predict`` can label images with it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from space import Genotype, build
from space._io import check_path, write_atomic
from space.builder import Network
from space.errors import UserError

METADATA_KEY = "budget_nas"
# A checksum of the tensors, beside the record: a file whose weights were damaged on disk
# would otherwise load and answer nan or nonsense without a word. Files written before it
# existed load unchecked.
CHECKSUM_KEY = "budget_nas_weights_sha256"
FORMAT = 1


@dataclass(frozen=True)
class ModelInfo:
    """Everything beside the weights that using the model needs."""

    genotype: Genotype
    classes: tuple[str, ...]
    in_channels: int
    image_size: tuple[int, int]  # (H, W) the model was trained on
    mean: tuple[float, ...]  # normalisation, per channel, in [0, 1] units
    std: tuple[float, ...]
    train_config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # name, metrics, provenance

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "genotype": self.genotype.to_dict(),
            "key": self.genotype.key(),
            "classes": list(self.classes),
            "in_channels": self.in_channels,
            "image_size": list(self.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "train_config": self.train_config,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        return cls(
            genotype=Genotype.from_dict(data["genotype"]),
            classes=tuple(data["classes"]),
            in_channels=int(data["in_channels"]),
            image_size=(int(data["image_size"][0]), int(data["image_size"][1])),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            train_config=dict(data.get("train_config", {})),
            extra=dict(data.get("extra", {})),
        )


def save_model(path: Path, model: torch.nn.Module, info: ModelInfo) -> None:
    """Write weights, their checksum and ``info`` to one safetensors file (atomically)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {METADATA_KEY: json.dumps(info.to_dict()), CHECKSUM_KEY: weights_checksum(tensors)}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def weights_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_info(path: Path) -> ModelInfo:
    """The architecture and data description stored in a model file, without its weights."""
    path = Path(path)
    check_path(path, what="model file")
    if not path.exists():
        raise UserError(f"{path}: no such model file (expected a model.safetensors from a run)")
    if not path.is_file():  # a named pipe would make the reader wait for ever
        raise UserError(f"{path}: not a regular file (expected a model.safetensors from a run)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(
            f"{path}: not a readable safetensors file ({exc}); is it truncated?"
        ) from None
    if METADATA_KEY not in metadata:
        raise UserError(f"{path}: a safetensors file without this project's architecture record")
    try:
        info = ModelInfo.from_dict(json.loads(metadata[METADATA_KEY]))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise UserError(f"{path}: damaged architecture record ({exc})") from None
    check_info(info, where=path)
    return info


def check_info(info: ModelInfo, *, where: Path) -> None:
    """A record that contradicts itself is a ``UserError``, not nan or a traceback later."""
    problem = _contradiction(info)
    if problem is not None:
        raise UserError(f"{where}: the architecture record contradicts itself ({problem})")


def _contradiction(info: ModelInfo) -> str | None:
    if len(info.classes) < 2:
        return f"{len(info.classes)} class(es); a classifier has at least 2"
    if not all(isinstance(c, str) for c in info.classes):
        return "class names must be strings"
    if len(set(info.classes)) != len(info.classes):
        return "the same class name twice"
    if info.in_channels < 1:
        return f"in_channels {info.in_channels}; expected 1 or more"
    h, w = info.image_size
    if not (1 <= h <= 4096 and 1 <= w <= 4096):
        return f"image size {h}x{w}; expected sides of 1 to 4096 pixels"
    for name, values in (("mean", info.mean), ("std", info.std)):
        if len(values) != info.in_channels:
            return f"{len(values)} {name} value(s) for {info.in_channels} channel(s)"
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return f"{name} {list(values)} is not a list of finite numbers"
    if not all(v > 0 for v in info.std):
        return f"std {list(info.std)}: every standard deviation must be > 0 (it divides)"
    # The network must take an input of that size: built and run on the meta device, no weights.
    try:
        with torch.device("meta"):
            model = build(info.genotype, num_classes=info.num_classes, in_channels=info.in_channels)
            out = model.eval()(torch.empty(1, info.in_channels, h, w))
    except (RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        return f"an input of {h}x{w} is too small for this network ({first})"
    if tuple(out.shape) != (1, info.num_classes):
        return f"the network answers {tuple(out.shape)} for one image, not (1, {info.num_classes})"
    return None


def load_model(path: Path, *, device: torch.device | str = "cpu") -> tuple[Network, ModelInfo]:
    """Rebuild the network a model file describes and load its weights (eval mode)."""
    path = Path(path)
    info = read_info(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
            saved = (f.metadata() or {}).get(CHECKSUM_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the weights ({exc}); is it truncated?") from None
    if saved is not None and weights_checksum(state) != saved:
        raise UserError(
            f"{path}: the weights are damaged (their checksum differs from the one saved with "
            "them); restore the file from a copy, or train the model again"
        )
    bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise UserError(f"{path}: the weights hold nan or inf (in {bad[0]}); the file is unusable")
    model = build(info.genotype, num_classes=info.num_classes, in_channels=info.in_channels)
    load_weights(model, state, where=path)
    return model.to(device).eval(), info


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], *, where: Path) -> None:
    """``model.load_state_dict(state)``, with a mismatch reported as another architecture."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise UserError(
            f"{where}: holds weights of another architecture ({detail[:160]})"
        ) from None
