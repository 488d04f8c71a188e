"""Tiny generated datasets for the tests: image folders and tarballs that a small net can learn.

Class ``c`` images are noise around a colour of their own, so a couple of epochs separate them.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("ant", "bee", "cat")
_COLOURS = ((220, 40, 40), (40, 200, 40), (40, 40, 220), (200, 200, 40), (40, 200, 200))


def make_image(cls: int, size: int, rng: np.random.Generator) -> Image.Image:
    colour = np.array(_COLOURS[cls % len(_COLOURS)], dtype=np.float64)
    pixels = colour + rng.normal(0, 30, (size, size, 3))
    # A bright square in a class-dependent corner gives the conv layers something spatial.
    q = size // 2
    r, c = divmod(cls % 4, 2)
    pixels[r * q : r * q + q // 2, c * q : c * q + q // 2] += 60
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def make_image_folder(
    root: Path,
    *,
    classes: tuple[str, ...] = CLASSES,
    train_per_class: int = 20,
    test_per_class: int = 6,
    size: int = 16,
    suffix: str = ".png",
    seed: int = 0,
) -> Path:
    """Write ``root/{train,test}/<class>/NNNN<suffix>`` and return ``root``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for i, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                make_image(i, size, rng).save(folder / f"{j:04d}{suffix}")
    return root


def make_tarball(folder: Path, path: Path, *, top: str | None = "data") -> Path:
    """Pack an image folder as a .tar or .tar.gz (by ``path``'s suffix), under ``top/``."""
    mode = "w:gz" if path.name.endswith((".tar.gz", ".tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                rel = file.relative_to(folder).as_posix()
                tar.add(file, arcname=f"{top}/{rel}" if top else rel)
    return path


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
