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
import dataclasses
import hashlib
import io
import os
import re
import shutil
import stat
import tarfile
import warnings
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from space._io import check_path, remove_stale_temporaries, write_atomic
from space.errors import UserError

if TYPE_CHECKING:
    from search.config import DataConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_FORMAT = 1  # bump when the cached file's layout changes
# The default validation split: this share of the training images, at most this many.
VAL_SHARE = 0.1
MAX_DEFAULT_VAL = 5000
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
class Decoded:
    """A source decoded: the train and test splits as published, before any validation split.

    ``cache`` is where the decoded tensors are still to be cached (``save_cache``), once the run
    that decoded them is known to go ahead; None when they came from the cache, or need none.
    """

    name: str  # "cifar10", or the folder/tarball name
    source: str  # what the user passed, resolved (a path or a dataset id)
    classes: tuple[str, ...]
    train: ImageSet
    test: ImageSet
    mean: tuple[float, ...]
    std: tuple[float, ...]
    cache: Path | None = None

    def class_counts(self) -> list[int]:
        """Training images per class, in class order."""
        counts = torch.bincount(self.train.labels.cpu(), minlength=len(self.classes))
        return counts.tolist()


def load_dataset(
    source: str | Path,
    *,
    val_size: int | None = None,
    subset: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> Dataset:
    """Load ``source``, carve ``val_size`` validation images from train, keep ``subset`` per class.

    ``decode``, ``split`` and ``save_cache`` in one: the cache is written only once the split
    worked. A command that can still refuse to run after loading its data calls the three
    itself, and ``save_cache`` only when it goes ahead.
    """
    check_split_arguments(val_size=val_size, subset=subset)
    decoded = decode(source, image_size=image_size, cache_dir=cache_dir, progress=progress)
    dataset = split(decoded, val_size=val_size, subset=subset, seed=seed)
    save_cache(decoded)
    return dataset


def check_split_arguments(*, val_size: int | None, subset: int | None) -> None:
    """The values themselves, before anything is decoded."""
    if val_size is not None and (
        isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0
    ):
        raise UserError(f"val_size must be an integer >= 0, but got {val_size!r}")
    if subset is not None and (
        isinstance(subset, bool) or not isinstance(subset, int) or subset < 1
    ):
        raise UserError(f"subset must be an integer >= 1 (images per class), but got {subset!r}")


def split(
    decoded: Decoded, *, val_size: int | None = None, subset: int | None = None, seed: int = 0
) -> Dataset:
    """The dataset to train on: ``val_size`` validation images split off the training set,
    class-balanced (the remainder spread over the first classes) and drawn with ``seed``, so the
    split is the same on every run; None follows the data (``default_val_size``). ``subset``
    keeps the first N remaining training images of every class, for quick CPU runs."""
    check_split_arguments(val_size=val_size, subset=subset)
    if val_size is None:
        val_size = default_val_size(decoded.class_counts())
    train, val = split_validation(decoded.train, decoded.classes, val_size=val_size, seed=seed)
    if subset is not None:
        train = first_per_class(train, len(decoded.classes), subset)
    return Dataset(
        name=decoded.name,
        source=decoded.source,
        classes=decoded.classes,
        train=train,
        val=val,
        test=decoded.test,
        mean=decoded.mean,
        std=decoded.std,
    )


def split_as_configured(
    decoded: Decoded, config: DataConfig, *, recorded_val_size: int | None = None
) -> tuple[DataConfig, Dataset]:
    """Split ``decoded`` as ``config`` says; returns the config with the validation size it came
    to, the number a study or a run folder records: ``config.val_size`` when given, else the
    size recorded by the run being resumed (``recorded_val_size``), else the default that
    follows the data. A recorded size that no longer fits the data gives way to the default (the
    resume is then refused for its other data, with that difference named)."""
    val_size = config.val_size
    if val_size is None and recorded_val_size is not None:
        with contextlib.suppress(UserError):
            dataset = split(
                decoded, val_size=recorded_val_size, subset=config.subset, seed=config.split_seed
            )
            return dataclasses.replace(config, val_size=recorded_val_size), dataset
    dataset = split(decoded, val_size=val_size, subset=config.subset, seed=config.split_seed)
    resolved = len(dataset.val) if dataset.val is not None else 0
    return dataclasses.replace(config, val_size=resolved), dataset


def default_val_size(counts: Sequence[int]) -> int:
    """The validation size that follows the data: ``VAL_SHARE`` of the training images, at most
    ``MAX_DEFAULT_VAL``, at least one image per class, and never so many that a class is left
    without a training image (0 when a class has a single image)."""
    wanted = max(len(counts), min(MAX_DEFAULT_VAL, round(sum(counts) * VAL_SHARE)))
    return min(wanted, largest_val_size(counts))


def largest_val_size(counts: Sequence[int]) -> int:
    """The most validation images a balanced split can take and leave every class a training
    image. A split of v takes v // K images of each of K classes and one more of each of the
    first v % K classes, so v = K (m - 1) + r works, with m the smallest class, for r up to the
    number of leading classes that hold more than m."""
    smallest = min(counts)
    spare = 0
    while spare < len(counts) and counts[spare] > smallest:
        spare += 1
    return len(counts) * (smallest - 1) + spare


def split_validation(
    train: ImageSet, classes: tuple[str, ...], *, val_size: int, seed: int
) -> tuple[ImageSet, ImageSet | None]:
    """(train without val, val): ``val_size`` images, balanced over classes, drawn with ``seed``.

    Both keep the original order of the images, so the split does not depend on the device.
    """
    if val_size == 0:
        return train, None
    num_classes = len(classes)
    labels = train.labels.cpu()
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    for c in range(num_classes):
        wanted = val_size // num_classes + (1 if c < val_size % num_classes else 0)
        if wanted >= counts[c]:
            largest = largest_val_size(counts)
            raise UserError(
                f"--val-size {val_size} takes {wanted} images of class {classes[c]!r}, which has "
                f"only {counts[c]}: at least one must be left to train on; at most {largest} "
                "works with this data (or leave --val-size out: the default follows the data)"
            )
    generator = torch.Generator().manual_seed(seed)
    is_val = torch.zeros(len(train), dtype=torch.bool)
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        wanted = val_size // num_classes + (1 if c < val_size % num_classes else 0)
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


def decode(
    source: str | Path,
    *,
    image_size: int | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> Decoded:
    """The decoded splits of ``source``, from the cache when it is current; nothing is written
    (see ``save_cache``). ``image_size`` resizes every image to that square side."""
    if image_size is not None and (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or not 1 <= image_size <= 4096
    ):
        raise UserError(f"image_size must be an integer in [1, 4096], but got {image_size!r}")
    source = str(source)
    if source.lower() in _TORCHVISION:
        name = source.lower()
        root = (cache_dir or default_cache_dir()) / "torchvision"
        decoded = _decode_torchvision(name, root, download=True)
        if image_size is not None:
            decoded = _resized(decoded, image_size)
        return dataclasses.replace(decoded, name=name, source=name)
    check_path(Path(source).expanduser(), what=f"data {source[:80]!r}")
    path = Path(source).expanduser()
    if not os.path.lexists(path):
        raise UserError(
            f"data {source!r}: no such file or folder (expected cifar10, cifar100, a folder "
            "ROOT/{train,test}/<class>/*.png|jpg, or a .tar/.tar.gz of one)"
        )
    mode = _mode(path, what="data")
    # The source as given, made absolute but not resolved: data/ linked to a larger disk stays
    # data/..., which a result records relative to the project root (provenance.portable_path).
    given = os.path.abspath(path)
    path = path.resolve()
    if stat.S_ISDIR(mode):
        for folder, name in _TORCHVISION_FOLDERS.items():
            if (path / folder).is_dir():
                decoded = _decode_torchvision(name, path, download=False)
                if image_size is not None:
                    decoded = _resized(decoded, image_size)
                return dataclasses.replace(decoded, name=name, source=given)
        key = _folder_key(path)
        name = path.name
    elif _is_tarball(path) and stat.S_ISREG(mode):
        key = _file_key(path)
        name = path.name.split(".")[0]
    else:
        kind = "a file" if stat.S_ISREG(mode) else _file_type(mode)
        raise UserError(
            f"data {path}: {kind}, not a folder or a .tar/.tar.gz/.tgz file (expected an "
            "image-folder tree ROOT/{train,test}/<class>/*.png|jpg or a tarball of one)"
        )
    key = hashlib.sha256(f"{key}|{image_size}|{CACHE_FORMAT}".encode()).hexdigest()[:16]
    cache = _cache_path(path, name, key, cache_dir)
    remove_stale_temporaries(cache.parent)  # of a writer killed while it wrote a cache
    if cache.is_file():
        cached = _read_cache(cache)
        if cached is not None:
            return dataclasses.replace(cached, name=name, source=given)
    files = _list_folder(path) if path.is_dir() else _list_tarball(path)
    decoded = _decode_files(files, image_size=image_size, progress=progress, where=path)
    return dataclasses.replace(decoded, name=name, source=given, cache=cache)


def save_cache(decoded: Decoded) -> None:
    """Write the cache of freshly decoded data (nothing for data read from the cache). A cache
    file that exists although the data was decoded afresh could not be read (damaged, or of
    another torch): it is replaced, atomically."""
    if decoded.cache is None:
        return
    payload = {
        "format": CACHE_FORMAT,
        "classes": list(decoded.classes),
        "train_images": decoded.train.images,
        "train_labels": decoded.train.labels,
        "test_images": decoded.test.images,
        "test_labels": decoded.test.labels,
        "mean": list(decoded.mean),
        "std": list(decoded.std),
    }
    # No cache this time on a read-only or full disk, say; the next run decodes again.
    with contextlib.suppress(OSError):
        write_atomic(decoded.cache, lambda tmp: torch.save(payload, tmp))


def _mode(path: Path, *, what: str) -> int:
    """The file type and permissions of ``path`` (a link followed), or a UserError naming it."""
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        target = os.readlink(path) if os.path.islink(path) else "?"
        raise UserError(f"{what} {path}: a link to {target}, which does not exist") from None
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot read it ({exc.strerror})") from None


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _cache_path(data: Path, name: str, key: str, cache_dir: Path | None) -> Path:
    """Beside the data (``<parent>/.nas-cache/``) when writable, else the user cache folder."""
    filename = f"{name}-{key}.pt"
    if cache_dir is not None:
        return cache_dir / filename
    beside = data.parent / ".nas-cache"
    if os.access(beside if beside.exists() else data.parent, os.W_OK):
        return beside / filename
    return default_cache_dir() / filename


def _read_cache(path: Path) -> Decoded | None:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if raw.get("format") != CACHE_FORMAT:
            return None
        return Decoded(
            name="",
            source="",
            classes=tuple(raw["classes"]),
            train=ImageSet(raw["train_images"], raw["train_labels"]),
            test=ImageSet(raw["test_images"], raw["test_labels"]),
            mean=tuple(raw["mean"]),
            std=tuple(raw["std"]),
        )
    except Exception:  # a damaged cache is not the user's problem: decode again
        return None


def _folder_key(root: Path) -> str:
    """Content key of a folder: every image's relative path, size and modification time."""
    h = hashlib.sha256()
    for split_name in ("train", "test"):
        base = root / split_name
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for f in sorted(filenames):
                if f.lower().endswith(IMAGE_SUFFIXES):
                    path = Path(dirpath) / f
                    st = os.stat(path) if os.path.exists(path) else os.lstat(path)
                    rel = os.path.relpath(path, root)
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
            images = _image_files(folder)
            if not images:
                raise UserError(
                    f"{folder}: class folder has no images (expected *.png, *.jpg or *.jpeg)"
                )
            files += [(split, c, str(p), _read(p)) for p in images]
    return files


def _image_files(folder: Path) -> list[Path]:
    """The entries of a class folder named like images, each checked to be a regular file (or
    a link to one) before anything opens it: reading a named pipe would wait for ever. macOS's
    AppleDouble files (``._name.png``, metadata a copy from a Mac leaves) are no images."""
    found = []
    named = (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for path in sorted(p for p in named if not p.name.startswith("._")):
        mode = _mode(path, what="image")
        if not stat.S_ISREG(mode):
            raise UserError(
                f"{path}: {_file_type(mode)} named like an image; expected a PNG or JPEG file "
                "(move it out of the class folder)"
            )
        found.append(path)
    return found


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the image ({exc.strerror})") from None


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
                if (
                    not member.isfile()
                    or not member.name.lower().endswith(IMAGE_SUFFIXES)
                    or parts[-1].startswith("._")  # a Mac's AppleDouble metadata, no image
                ):
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
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{where}: cannot decode the image ({too_large()})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        # PIL names the in-memory buffer ("<_io.BytesIO object at 0x...>"), not the file.
        reason = "an empty file" if not data else re.sub(r" ?<_io\.BytesIO[^>]*>", "", str(exc))
        raise UserError(
            f"{where}: cannot decode the image ({reason}); expected a PNG or JPEG"
        ) from None


def too_large() -> str:
    """Why an image past PIL's decompression-bomb guard is refused."""
    return (
        "more pixels than the decoder's guard against decompression bombs allows, "
        f"{Image.MAX_IMAGE_PIXELS:,}; expected an image of a usual size"
    )


def _decode_files(
    files: list[_File], *, image_size: int | None, progress: bool, where: Path
) -> Decoded:
    from tqdm import tqdm

    classes = sorted({c for _, c, _, _ in files})
    index = {c: i for i, c in enumerate(classes)}
    # PIL releases the GIL while decoding, so threads use every core. An image past PIL's
    # decompression-bomb guard is an error, not a warning followed by gigabytes of pixels (the
    # filter is process-wide, so the threads see it too).
    with (
        warnings.catch_warnings(),
        ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool,
    ):
        warnings.simplefilter("error", Image.DecompressionBombWarning)
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
    return _decoded(tuple(classes), splits["train"], splits["test"])


def _decoded(classes: tuple[str, ...], train: ImageSet, test: ImageSet) -> Decoded:
    """Decoded splits with the training images' statistics; the caller names the source."""
    mean, std = _channel_stats(train.images)
    return Decoded(name="", source="", classes=classes, train=train, test=test, mean=mean, std=std)


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


def _decode_torchvision(name: str, root: Path, *, download: bool) -> Decoded:
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION[name])
    label = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[name]
    created = _missing_folders(root)  # what a failed download must not leave behind
    try:
        sets = {
            split: cls(str(root), train=split == "train", download=download)
            for split in ("train", "test")
        }
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        _remove_empty(created)
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
    return _decoded(tuple(sets["train"].classes), splits["train"], splits["test"])


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, deepest first."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed download created, deepest first, where nothing is left in
    them but what the download itself put there (a partial archive)."""
    for folder in folders:
        if folder.is_dir() and folder == folders[0]:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                folder.rmdir()


def _resized(d: Decoded, size: int) -> Decoded:
    def resize(s: ImageSet) -> ImageSet:
        x = torch.nn.functional.interpolate(
            s.images.float(), size=(size, size), mode="bilinear", antialias=True
        )
        return ImageSet(x.round().clamp(0, 255).to(torch.uint8), s.labels)

    return _decoded(d.classes, resize(d.train), resize(d.test))


def batches(
    n: int, batch_size: int, *, generator: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    """Index tensors of one shuffled epoch over ``n`` items, every batch full (the last partial
    batch is dropped; an epoch shorter than one batch is one smaller batch)."""
    order = torch.randperm(n, generator=generator, device=device)
    steps = max(1, n // batch_size)
    for i in range(steps):
        yield order[i * batch_size : (i + 1) * batch_size]
