"""Datasets as uint8 tensors: CIFAR-10/100, image-folder trees and tarballs of them.

Every source is decoded once to ``(N, C, H, W)`` uint8 tensors and cached beside the data (keyed
by content, so a changed folder is decoded again); a second run loads the cache in about a second.
The search trains on ``train`` and ranks on ``val``, a class-balanced seeded split carved from the
training images; ``test`` is touched only by the final evaluation of a retrained model.

Sources (``load_dataset(source)``):

- ``cifar10`` / ``cifar100``: torchvision's copy, downloaded into the cache folder when online;
- a folder ``ROOT/{train,test}/<class>/*.{png,jpg,jpeg}``, any number of classes, any image size
  (all images of a set must share one size unless ``image_size`` asks for a resize);
- a ``.tar`` / ``.tar.gz`` / ``.tgz`` holding such a tree (optionally under one top folder);
- a folder holding torchvision's ``cifar-10-batches-py`` or ``cifar-100-python``.

Every problem with the data is a ``UserError`` naming the file or folder and what was expected.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from space._io import write_atomic
from space.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_FORMAT = 1  # bump when the cached file's layout changes
_TORCHVISION = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}
_TORCHVISION_FOLDERS = {"cifar-10-batches-py": "cifar10", "cifar-100-python": "cifar100"}


@dataclass(frozen=True)
class ImageSet:
    """Images and labels of one split."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64, class indices

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.images.to(device), self.labels.to(device))

    def take(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index])


@dataclass(frozen=True)
class Dataset:
    """A dataset ready to train on: splits, class names and normalisation statistics."""

    name: str  # "cifar10", or the folder/tarball name
    source: str  # what the user passed, resolved (a path or a dataset id)
    classes: tuple[str, ...]
    train: ImageSet  # training images, without the validation split
    val: ImageSet | None  # carved from train; None when val_size is 0
    test: ImageSet
    mean: tuple[float, ...]  # per-channel mean of the training images, in [0, 1] units
    std: tuple[float, ...]  # per-channel standard deviation, same units

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train.images.shape[2:])  # type: ignore[return-value]

    def describe(self) -> str:
        h, w = self.image_size
        val = len(self.val) if self.val is not None else 0
        return (
            f"{self.name}: {self.num_classes} classes, {h}x{w}x{self.in_channels}, "
            f"{len(self.train):,} train / {val:,} val / {len(self.test):,} test images"
        )


@dataclass(frozen=True)
class _Decoded:
    """What the cache holds: the full train and test splits as published."""

    classes: tuple[str, ...]
    train: ImageSet
    test: ImageSet
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load_dataset(
    source: str | Path,
    *,
    val_size: int = 5000,
    subset: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> Dataset:
    """Load ``source``, carve ``val_size`` validation images from train, keep ``subset`` per class.

    ``val_size`` images are split off the training set, class-balanced (the remainder spread
    over the first classes) and drawn with ``seed``, so the split is the same on every run.
    ``subset`` keeps the first N remaining training images of every class, for quick CPU runs.
    ``image_size`` resizes every image to that square side; otherwise sizes are kept.
    """
    if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0:
        raise UserError(f"val_size must be an integer >= 0, but got {val_size!r}")
    if subset is not None and (
        isinstance(subset, bool) or not isinstance(subset, int) or subset < 1
    ):
        raise UserError(f"subset must be an integer >= 1 (images per class), but got {subset!r}")
    if image_size is not None and (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or not 1 <= image_size <= 4096
    ):
        raise UserError(f"image_size must be an integer in [1, 4096], but got {image_size!r}")
    decoded, name, resolved = _decode_cached(
        str(source), image_size=image_size, cache_dir=cache_dir, progress=progress
    )
    train, val = split_validation(decoded.train, decoded.classes, val_size=val_size, seed=seed)
    if subset is not None:
        train = first_per_class(train, len(decoded.classes), subset)
    return Dataset(
        name=name,
        source=resolved,
        classes=decoded.classes,
        train=train,
        val=val,
        test=decoded.test,
        mean=decoded.mean,
        std=decoded.std,
    )


def split_validation(
    train: ImageSet, classes: tuple[str, ...], *, val_size: int, seed: int
) -> tuple[ImageSet, ImageSet | None]:
    """(train without val, val): ``val_size`` images, balanced over classes, drawn with ``seed``.

    Both keep the original order of the images, so the split does not depend on the device.
    """
    if val_size == 0:
        return train, None
    num_classes = len(classes)
    generator = torch.Generator().manual_seed(seed)
    is_val = torch.zeros(len(train), dtype=torch.bool)
    labels = train.labels.cpu()
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        wanted = val_size // num_classes + (1 if c < val_size % num_classes else 0)
        if wanted >= len(members):
            raise UserError(
                f"val_size {val_size} takes {wanted} images of class {classes[c]!r}, which has "
                f"only {len(members)}: at least one must be left to train on"
            )
        chosen = members[torch.randperm(len(members), generator=generator)[:wanted]]
        is_val[chosen] = True
    return train.take(torch.nonzero(~is_val).flatten()), train.take(torch.nonzero(is_val).flatten())


def first_per_class(images: ImageSet, num_classes: int, n: int) -> ImageSet:
    """The first ``n`` images of every class, in their original order."""
    labels = images.labels.cpu()
    keep = torch.zeros(len(images), dtype=torch.bool)
    for c in range(num_classes):
        keep[torch.nonzero(labels == c).flatten()[:n]] = True
    return images.take(torch.nonzero(keep).flatten())


# -- decoding and the cache -----------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$NAS_CACHE_DIR``, else ``~/.cache/budget-nas``."""
    env = os.environ.get("NAS_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "budget-nas"


def _decode_cached(
    source: str, *, image_size: int | None, cache_dir: Path | None, progress: bool
) -> tuple[_Decoded, str, str]:
    """(decoded splits, dataset name, resolved source), from the cache when it is current."""
    if source.lower() in _TORCHVISION:
        name = source.lower()
        root = (cache_dir or default_cache_dir()) / "torchvision"
        decoded = _decode_torchvision(name, root, download=True)
        if image_size is not None:
            decoded = _resized(decoded, image_size)
        return decoded, name, name
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(
            f"data {source!r}: no such file or folder (expected cifar10, cifar100, a folder "
            "ROOT/{train,test}/<class>/*.png|jpg, or a .tar/.tar.gz of one)"
        )
    path = path.resolve()
    if path.is_dir():
        for folder, name in _TORCHVISION_FOLDERS.items():
            if (path / folder).is_dir():
                decoded = _decode_torchvision(name, path, download=False)
                if image_size is not None:
                    decoded = _resized(decoded, image_size)
                return decoded, name, str(path)
        key = _folder_key(path)
        name = path.name
    elif _is_tarball(path):
        key = _file_key(path)
        name = path.name.split(".")[0]
    else:
        raise UserError(
            f"data {path}: not a folder or a .tar/.tar.gz/.tgz file (expected an image-folder "
            "tree ROOT/{train,test}/<class>/*.png|jpg or a tarball of one)"
        )
    key = hashlib.sha256(f"{key}|{image_size}|{CACHE_FORMAT}".encode()).hexdigest()[:16]
    cache = _cache_path(path, name, key, cache_dir)
    if cache.exists():
        decoded = _read_cache(cache)
        if decoded is not None:
            return decoded, name, str(path)
    files = _list_folder(path) if path.is_dir() else _list_tarball(path)
    decoded = _decode_files(files, image_size=image_size, progress=progress, where=path)
    _write_cache(cache, decoded)
    return decoded, name, str(path)


def _cache_path(data: Path, name: str, key: str, cache_dir: Path | None) -> Path:
    """Beside the data (``<parent>/.nas-cache/``) when writable, else the user cache folder."""
    filename = f"{name}-{key}.pt"
    if cache_dir is not None:
        return cache_dir / filename
    beside = data.parent / ".nas-cache"
    if os.access(beside if beside.exists() else data.parent, os.W_OK):
        return beside / filename
    return default_cache_dir() / filename


def _read_cache(path: Path) -> _Decoded | None:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if raw.get("format") != CACHE_FORMAT:
            return None
        return _Decoded(
            classes=tuple(raw["classes"]),
            train=ImageSet(raw["train_images"], raw["train_labels"]),
            test=ImageSet(raw["test_images"], raw["test_labels"]),
            mean=tuple(raw["mean"]),
            std=tuple(raw["std"]),
        )
    except Exception:  # a damaged cache is not the user's problem: decode again
        return None


def _write_cache(path: Path, d: _Decoded) -> None:
    payload = {
        "format": CACHE_FORMAT,
        "classes": list(d.classes),
        "train_images": d.train.images,
        "train_labels": d.train.labels,
        "test_images": d.test.images,
        "test_labels": d.test.labels,
        "mean": list(d.mean),
        "std": list(d.std),
    }
    # No cache this time on a read-only disk, say; the next run decodes again.
    with contextlib.suppress(OSError):
        write_atomic(path, lambda tmp: torch.save(payload, tmp))


def _folder_key(root: Path) -> str:
    """Content key of a folder: every image's relative path, size and modification time."""
    h = hashlib.sha256()
    for split in ("train", "test"):
        base = root / split
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for f in sorted(filenames):
                if f.lower().endswith(IMAGE_SUFFIXES):
                    st = os.stat(os.path.join(dirpath, f))
                    rel = os.path.relpath(os.path.join(dirpath, f), root)
                    h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _file_key(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_tarball(path: Path) -> bool:
    return path.name.lower().endswith((".tar", ".tar.gz", ".tgz"))


# A file to decode: (split, class name, where it is for messages, its bytes).
_File = tuple[str, str, str, bytes]


def _list_folder(root: Path) -> list[_File]:
    classes = _check_layout(root, {s: _subdirs(root / s) for s in ("train", "test")}, root)
    files: list[_File] = []
    for split in ("train", "test"):
        for c in classes:
            folder = root / split / c
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise UserError(
                    f"{folder}: class folder has no images (expected *.png, *.jpg or *.jpeg)"
                )
            files += [(split, c, str(p), p.read_bytes()) for p in images]
    return files


def _subdirs(path: Path) -> list[str] | None:
    if not path.is_dir():
        return None
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_layout(
    where: Path, class_lists: dict[str, list[str] | None], root_for_messages: Path | str
) -> list[str]:
    for split in ("train", "test"):
        if class_lists[split] is None:
            raise UserError(
                f"{root_for_messages}: no {split}/ folder (expected {split}/<class>/*.png|jpg)"
            )
        if not class_lists[split]:
            raise UserError(
                f"{root_for_messages}/{split}: no class folders "
                f"(expected {split}/<class>/*.png|jpg)"
            )
    train, test = class_lists["train"], class_lists["test"]
    if train != test:
        only_train = sorted(set(train) - set(test))  # type: ignore[arg-type]
        only_test = sorted(set(test) - set(train))  # type: ignore[arg-type]
        raise UserError(
            f"{root_for_messages}: train and test have different classes "
            f"(only in train: {only_train or 'none'}; only in test: {only_test or 'none'})"
        )
    if len(train) < 2:  # type: ignore[arg-type]
        raise UserError(f"{root_for_messages}: found 1 class; a classifier needs at least 2")
    return train  # type: ignore[return-value]


def _list_tarball(path: Path) -> list[_File]:
    """Every image of the tarball, found as ``[top/]{train,test}/<class>/<file>``."""
    entries: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    folders: set[tuple[str, str]] = set()  # (split, class) of every class folder, empty or not
    tops: set[str] = set()
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if len(parts) >= 3 and parts[-3] in ("train", "test"):
                    tops.add("/".join(parts[:-3]))
                is_class_folder = len(parts) >= 2 and parts[-2] in ("train", "test")
                if member.isdir() and is_class_folder and not parts[-1].startswith("."):
                    folders.add((parts[-2], parts[-1]))
                if not member.isfile() or not member.name.lower().endswith(IMAGE_SUFFIXES):
                    continue
                if len(parts) < 3 or parts[-3] not in ("train", "test"):
                    continue
                data = tar.extractfile(member)
                if data is None:
                    continue
                entries.setdefault((parts[-3], parts[-2]), []).append((member.name, data.read()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserError(f"{path}: cannot read the tarball ({exc}); is it complete?") from None
    if len(tops) > 1:
        raise UserError(
            f"{path}: holds several train/test trees ({', '.join(sorted(tops))}); "
            "expected one [top/]{train,test}/<class>/ tree"
        )
    found = folders | set(entries)
    class_lists = {
        s: sorted({c for (split, c) in found if split == s}) or None for s in ("train", "test")
    }
    if not entries:
        raise UserError(
            f"{path}: no images under train/<class>/ or test/<class>/ (expected .png/.jpg files)"
        )
    classes = _check_layout(path, class_lists, path)
    files: list[_File] = []
    for split in ("train", "test"):
        for c in classes:
            if (split, c) not in entries:
                raise UserError(f"{path}: {split}/{c}/ has no images")
            files += [(split, c, f"{path}:{n}", b) for n, b in sorted(entries[(split, c)])]
    return files


def _decode_one(item: _File, image_size: int | None) -> np.ndarray:
    _, _, where, data = item
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        # PIL names the in-memory buffer ("<_io.BytesIO object at 0x...>"), not the file.
        reason = "an empty file" if not data else re.sub(r" ?<_io\.BytesIO[^>]*>", "", str(exc))
        raise UserError(
            f"{where}: cannot decode the image ({reason}); expected a PNG or JPEG"
        ) from None


def _decode_files(
    files: list[_File], *, image_size: int | None, progress: bool, where: Path
) -> _Decoded:
    from tqdm import tqdm

    classes = sorted({c for _, c, _, _ in files})
    index = {c: i for i, c in enumerate(classes)}
    # PIL releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(
            tqdm(
                pool.map(lambda f: _decode_one(f, image_size), files, chunksize=256),
                total=len(files),
                desc=f"decoding {where.name}",
                unit="img",
                disable=not progress,
                leave=False,
            )
        )
    first = arrays[0].shape
    for item, array in zip(files, arrays, strict=True):
        if array.shape != first:
            raise UserError(
                f"{item[2]}: image is {array.shape[1]}x{array.shape[0]} but "
                f"{files[0][2]} is {first[1]}x{first[0]}; pass an image size to resize them all"
            )
    splits = {}
    for split in ("train", "test"):
        chosen = [i for i, f in enumerate(files) if f[0] == split]
        images = torch.from_numpy(np.stack([arrays[i] for i in chosen])).permute(0, 3, 1, 2)
        labels = torch.tensor([index[files[i][1]] for i in chosen], dtype=torch.int64)
        splits[split] = ImageSet(images.contiguous(), labels)
    mean, std = _channel_stats(splits["train"].images)
    return _Decoded(tuple(classes), splits["train"], splits["test"], mean, std)


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units, in float64 chunks."""
    n = images.shape[0]
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, n, 4096):
        chunk = images[start : start + 4096].to(torch.float64) / 255
        total += chunk.sum((0, 2, 3))
        squares += (chunk * chunk).sum((0, 2, 3))
    count = n * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _decode_torchvision(name: str, root: Path, *, download: bool) -> _Decoded:
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION[name])
    label = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[name]
    try:
        sets = {
            split: cls(str(root), train=split == "train", download=download)
            for split in ("train", "test")
        }
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"cannot get {label} into {root} ({reason}); offline? point --data at a local copy: "
            "a folder with torchvision's cifar-10-batches-py, or an image-folder tree or "
            ".tar.gz of ROOT/{train,test}/<class>/*.png|jpg"
        ) from None
    splits = {
        split: ImageSet(
            torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
            torch.tensor(ds.targets, dtype=torch.int64),
        )
        for split, ds in sets.items()
    }
    mean, std = _channel_stats(splits["train"].images)
    return _Decoded(tuple(sets["train"].classes), splits["train"], splits["test"], mean, std)


def _resized(d: _Decoded, size: int) -> _Decoded:
    def resize(s: ImageSet) -> ImageSet:
        x = torch.nn.functional.interpolate(
            s.images.float(), size=(size, size), mode="bilinear", antialias=True
        )
        return ImageSet(x.round().clamp(0, 255).to(torch.uint8), s.labels)

    train = resize(d.train)
    mean, std = _channel_stats(train.images)
    return _Decoded(d.classes, train, resize(d.test), mean, std)


def batches(
    n: int, batch_size: int, *, generator: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    """Index tensors of one shuffled epoch over ``n`` items, every batch full (the last partial
    batch is dropped; an epoch shorter than one batch is one smaller batch)."""
    order = torch.randperm(n, generator=generator, device=device)
    steps = max(1, n // batch_size)
    for i in range(steps):
        yield order[i * batch_size : (i + 1) * batch_size]
