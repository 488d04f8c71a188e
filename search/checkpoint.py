"""A trained model as one self-contained file: safetensors weights plus the architecture.

The safetensors metadata carries the genotype, the class names, the input shape and the
normalisation, so ``load_model`` rebuilds the exact network without Optuna, the study or the
search code, and ``search.predict`` can label images with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from space import Genotype, build
from space._io import write_atomic
from space.builder import Network
from space.errors import UserError

METADATA_KEY = "budget_nas"
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
    """Write weights and ``info`` to one safetensors file (atomically)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {METADATA_KEY: json.dumps(info.to_dict())}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_info(path: Path) -> ModelInfo:
    """The architecture and data description stored in a model file, without its weights."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such model file (expected a model.safetensors from a run)")
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
        return ModelInfo.from_dict(json.loads(metadata[METADATA_KEY]))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: damaged architecture record ({exc})") from None


def load_model(path: Path, *, device: torch.device | str = "cpu") -> tuple[Network, ModelInfo]:
    """Rebuild the network a model file describes and load its weights (eval mode)."""
    path = Path(path)
    info = read_info(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the weights ({exc}); is it truncated?") from None
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
