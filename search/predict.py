"""Label images with a trained model.

    python -m search.predict results/<study>/retrain/trial-17/seed-0/model.safetensors cat.png

prints, for each image, the top-k classes with their probabilities, using the class names stored
in the model file. Images of another size are resized to the model's input size.
Exit 0 on success, 2 on bad input (a missing or corrupt model or image).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from search.augment import Normalization
from search.checkpoint import ModelInfo, load_model
from search.config import resolve_device
from search.data import too_large
from space._cli import ArgumentParser
from space._io import check_path
from space.errors import UserError


def read_image(path: Path, info: ModelInfo) -> torch.Tensor:
    """(C, H, W) uint8 at the model's input size and channel count."""
    check_path(path, what="image")
    if not path.exists():
        raise UserError(f"{path}: no such image")
    if not path.is_file():  # a named pipe would make the reader wait for ever
        raise UserError(f"{path}: not a regular file (expected a PNG or JPEG image)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img = img.convert("RGB" if info.in_channels == 3 else "L")
                h, w = info.image_size
                if img.size != (w, h):
                    img = img.resize((w, h), Image.Resampling.BILINEAR)
                array = np.asarray(img, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{path}: cannot decode the image ({too_large()})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"{path}: cannot decode the image ({exc}); expected PNG or JPEG") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


@torch.no_grad()
def predict(
    model: torch.nn.Module, info: ModelInfo, images: torch.Tensor, *, device: torch.device
) -> torch.Tensor:
    """(N, classes) probabilities of uint8 (N, C, H, W) images."""
    x = Normalization(info.mean, info.std).apply(images.to(device).float() / 255)
    return torch.softmax(model.to(device).eval()(x).float(), dim=1).cpu()


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python -m search.predict",
        description="Print the top-k classes of images with a trained model.safetensors.",
    )
    p.add_argument("model", type=Path, help="a model.safetensors written by a run")
    p.add_argument("images", type=Path, nargs="+", help="PNG or JPEG files")
    p.add_argument("--top-k", type=int, default=3, help="classes per image (default 3)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")
    args = p.parse_args(argv)
    try:
        if args.top_k < 1:
            raise UserError(f"--top-k must be an integer >= 1, but got {args.top_k}")
        device = resolve_device(args.device)
        model, info = load_model(args.model, device=device)
        if info.in_channels not in (1, 3):
            raise UserError(
                f"{args.model}: a model of {info.in_channels}-channel images; predict reads "
                "colour (3) or grey (1) images"
            )
        batch = torch.stack([read_image(path, info) for path in args.images])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    probs = predict(model, info, batch, device=device)
    k = min(args.top_k, info.num_classes)
    for path, row in zip(args.images, probs, strict=True):
        values, indices = row.topk(k)
        ranked = "  ".join(
            f"{info.classes[i]} {v:.3f}"
            for v, i in zip(values.tolist(), indices.tolist(), strict=True)
        )
        print(f"{path}: {ranked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
