from __future__ import annotations

import os
import tarfile
import urllib.error
from pathlib import Path

import pytest
import torch

import search.data as data_module
from search.data import batches, first_per_class, load_dataset, split_validation
from space.errors import UserError
from tests.images import CLASSES, make_image_folder, make_tarball


@pytest.fixture
def folder(tmp_path):
    return make_image_folder(tmp_path / "tiny")


def load(source, tmp_path, **kwargs):
    kwargs.setdefault("val_size", 6)
    return load_dataset(source, cache_dir=tmp_path / "cache", **kwargs)


def test_image_folder_loads_as_uint8_tensors(folder, tmp_path) -> None:
    ds = load(folder, tmp_path)
    assert ds.classes == CLASSES
    assert ds.train.images.dtype == torch.uint8
    assert ds.train.images.shape == (60 - 6, 3, 16, 16)
    assert ds.test.images.shape == (18, 3, 16, 16)
    assert ds.val is not None and len(ds.val) == 6
    assert ds.test.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert ds.num_classes == 3 and ds.in_channels == 3 and ds.image_size == (16, 16)
    # Class 0 is red: its mean red channel is far above blue.
    red = ds.test.images[ds.test.labels == 0].float().mean((0, 2, 3))
    assert red[0] > red[2] + 100


def test_second_load_comes_from_the_cache(folder, tmp_path, monkeypatch) -> None:
    first = load(folder, tmp_path)
    assert len(list((tmp_path / "cache").glob("tiny-*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(data_module, "_decode_files", no_decoding)
    second = load(folder, tmp_path)
    assert torch.equal(first.train.images, second.train.images)
    assert first.mean == second.mean


def test_changed_folder_is_read_again(folder, tmp_path) -> None:
    before = load(folder, tmp_path)
    extra = folder / "train" / "bee" / "9999.png"
    (folder / "train" / "bee" / "0000.png").rename(extra)
    (folder / "train" / "bee" / "0001.png").unlink()
    after = load(folder, tmp_path)
    assert len(after.train) == len(before.train) - 1


def test_cache_beside_the_data_by_default(folder) -> None:
    load_dataset(folder, val_size=0)
    assert len(list((folder.parent / ".nas-cache").glob("tiny-*.pt"))) == 1


@pytest.mark.parametrize(("name", "top"), [("t.tar", None), ("t.tar.gz", "cifar"), ("t.tgz", "x")])
def test_tarball_equals_folder(folder, tmp_path, name, top) -> None:
    tarball = make_tarball(folder, tmp_path / name, top=top)
    a, b = load(folder, tmp_path), load(tarball, tmp_path)
    assert a.classes == b.classes
    assert torch.equal(a.train.images, b.train.images)
    assert torch.equal(a.test.labels, b.test.labels)
    assert b.name == "t"


def test_validation_split_is_balanced_disjoint_and_stable(tmp_path) -> None:
    root = make_image_folder(tmp_path / "d", train_per_class=30)
    full = load(root, tmp_path, val_size=0).train
    a = load(root, tmp_path, val_size=10, seed=3)
    b = load(root, tmp_path, val_size=10, seed=3)
    c = load(root, tmp_path, val_size=10, seed=4)
    assert torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)
    # 10 over 3 classes: 4, 3, 3.
    assert torch.bincount(a.val.labels).tolist() == [4, 3, 3]
    # Disjoint, and together exactly the training set.
    rows = {tuple(x.flatten().tolist()) for x in full.images}
    train_rows = {tuple(x.flatten().tolist()) for x in a.train.images}
    val_rows = {tuple(x.flatten().tolist()) for x in a.val.images}
    assert train_rows.isdisjoint(val_rows)
    assert train_rows | val_rows == rows and len(a.train) + len(a.val) == len(full)


def test_validation_split_must_leave_training_images() -> None:
    images = torch.zeros(6, 3, 4, 4, dtype=torch.uint8)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    with pytest.raises(UserError, match="at least one must be left"):
        split_validation(data_module.ImageSet(images, labels), ("a", "b"), val_size=6, seed=0)


def test_subset_keeps_the_first_images_of_each_class(folder, tmp_path) -> None:
    full = load(folder, tmp_path)
    small = load(folder, tmp_path, subset=5)
    assert torch.bincount(small.train.labels).tolist() == [5, 5, 5]
    expected = first_per_class(full.train, 3, 5)
    assert torch.equal(small.train.images, expected.images)
    for c in range(3):
        assert torch.equal(
            small.train.images[small.train.labels == c],
            full.train.images[full.train.labels == c][:5],
        )


def test_resize_when_asked_and_sizes_must_agree_otherwise(tmp_path) -> None:
    root = make_image_folder(tmp_path / "d", size=16)
    make_image_folder(tmp_path / "other", size=20, classes=("ant",), test_per_class=0)
    odd = tmp_path / "other" / "train" / "ant" / "0000.png"
    odd.rename(root / "train" / "ant" / "big.png")
    with pytest.raises(UserError, match=r"big\.png: image is 20x20 but .* is 16x16"):
        load(root, tmp_path)
    ds = load(root, tmp_path, image_size=12)
    assert ds.train.images.shape[1:] == (3, 12, 12)


def test_jpeg_and_uppercase_suffixes(tmp_path) -> None:
    root = make_image_folder(tmp_path / "j", suffix=".JPG")
    assert len(load(root, tmp_path, val_size=0).train) == 60


# -- bad data: one line naming the file or folder ---------------------------------------------


def _bad(tmp_path, build) -> str:
    source = build(tmp_path)
    with pytest.raises(UserError) as info:
        load_dataset(source, cache_dir=tmp_path / "cache", val_size=0)
    message = str(info.value)
    assert "\n" not in message
    assert not (tmp_path / "cache").exists()  # nothing written for bad data
    return message


def test_missing_folder(tmp_path) -> None:
    assert "no such file or folder" in _bad(tmp_path, lambda p: p / "nope")


def test_no_classes(tmp_path) -> None:
    def build(p):
        (p / "d" / "train").mkdir(parents=True)
        (p / "d" / "test").mkdir()
        return p / "d"

    assert "train: no class folders" in _bad(tmp_path, build)


def test_no_test_folder(tmp_path) -> None:
    def build(p):
        root = make_image_folder(p / "d")
        for f in (root / "test").rglob("*.png"):
            f.unlink()
        for d in sorted((root / "test").iterdir()):
            d.rmdir()
        (root / "test").rmdir()
        return root

    assert "no test/ folder" in _bad(tmp_path, build)


def test_empty_class(tmp_path) -> None:
    def build(p):
        root = make_image_folder(p / "d")
        for f in (root / "train" / "bee").iterdir():
            f.unlink()
        return root

    message = _bad(tmp_path, build)
    assert "train/bee" in message and "no images" in message


@pytest.mark.parametrize("splits", [("train",), ("train", "test")])
def test_empty_class_in_a_tarball(tmp_path, splits) -> None:
    # tar packs the empty class folder as a directory entry, with no file under it.
    def build(p):
        root = make_image_folder(p / "d")
        for split in splits:
            for f in (root / split / "bee").iterdir():
                f.unlink()
        with tarfile.open(p / "d.tar", "w") as tar:
            tar.add(root, arcname="data")
        return p / "d.tar"

    message = _bad(tmp_path, build)
    assert "train/bee/ has no images" in message


def test_empty_image_file_is_named_plainly(tmp_path) -> None:
    def build(p):
        root = make_image_folder(p / "d")
        (root / "train" / "cat" / "0001.png").write_bytes(b"")
        return root

    message = _bad(tmp_path, build)
    assert "0001.png: cannot decode the image (an empty file)" in message
    assert "BytesIO" not in message


def test_class_lists_differ(tmp_path) -> None:
    def build(p):
        root = make_image_folder(p / "d")
        (root / "test" / "cat").rename(root / "test" / "dog")
        return root

    message = _bad(tmp_path, build)
    assert "different classes" in message and "'cat'" in message and "'dog'" in message


def test_single_class(tmp_path) -> None:
    message = _bad(tmp_path, lambda p: make_image_folder(p / "d", classes=("ant",)))
    assert "at least 2" in message


def test_corrupt_image(tmp_path) -> None:
    def build(p):
        root = make_image_folder(p / "d")
        (root / "train" / "cat" / "0003.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        return root

    message = _bad(tmp_path, build)
    assert "0003.png: cannot decode the image" in message


def test_corrupt_tarball(tmp_path) -> None:
    def build(p):
        tarball = make_tarball(make_image_folder(p / "d"), p / "d.tar.gz")
        tarball.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
        return tarball

    assert "cannot read the tarball" in _bad(tmp_path, build)


def test_tarball_without_images(tmp_path) -> None:
    def build(p):
        (p / "junk").mkdir()
        (p / "junk" / "readme.txt").write_text("hello")
        return make_tarball(p / "junk", p / "junk.tar")

    assert "no images under train/<class>/" in _bad(tmp_path, build)


def test_not_a_dataset_file(tmp_path) -> None:
    def build(p):
        (p / "x.csv").write_text("a,b\n")
        return p / "x.csv"

    assert "not a folder or a .tar" in _bad(tmp_path, build)


def test_cifar_download_failure_says_how_to_point_at_a_local_copy(tmp_path, monkeypatch) -> None:
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(UserError) as info:
        load_dataset("cifar10", cache_dir=tmp_path)
    message = str(info.value)
    assert "cannot get CIFAR-10" in message and "Name or service not known" in message
    assert "--data" in message


def test_bad_arguments(folder, tmp_path) -> None:
    for kwargs, fragment in [
        ({"val_size": -1}, "val_size"),
        ({"subset": 0}, "subset"),
        ({"image_size": 0}, "image_size"),
    ]:
        with pytest.raises(UserError, match=fragment):
            load(folder, tmp_path, **kwargs)


def test_batches_cover_an_epoch_once() -> None:
    g = torch.Generator().manual_seed(0)
    seen = torch.cat(list(batches(103, 10, generator=g, device=torch.device("cpu"))))
    assert len(seen) == 100 and len(set(seen.tolist())) == 100
    assert [len(b) for b in batches(7, 10, generator=g, device=torch.device("cpu"))] == [7]


def test_cache_is_not_world_unreadable(folder, tmp_path) -> None:
    load(folder, tmp_path)
    cache = next((tmp_path / "cache").glob("*.pt"))
    assert os.stat(cache).st_mode & 0o044


# -- entries named like images that are not image files ---------------------------------------


def _refused(folder, tmp_path, fragment: str) -> None:
    """One line naming the entry, promptly (a named pipe must not make it wait), no cache."""
    import signal

    def too_slow(*_):
        raise AssertionError("loading hung")

    signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(20)
    try:
        with pytest.raises(UserError, match=fragment) as info:
            load_dataset(folder, cache_dir=tmp_path / "cache", val_size=0)
    finally:
        signal.alarm(0)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_a_named_pipe_named_like_an_image_is_refused_without_reading_it(folder, tmp_path) -> None:
    os.mkfifo(folder / "train" / "bee" / "0100.png")
    _refused(folder, tmp_path, r"train/bee/0100\.png: a named pipe named like an image")


def test_a_folder_named_like_an_image_is_refused(folder, tmp_path) -> None:
    (folder / "test" / "cat" / "extra.jpg").mkdir()
    _refused(folder, tmp_path, r"extra\.jpg: a folder named like an image")


def test_a_dangling_link_named_like_an_image_is_refused(folder, tmp_path) -> None:
    (folder / "train" / "ant" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    _refused(folder, tmp_path, r"gone\.png: a link to .*nowhere\.png, which does not exist")


def test_a_link_to_an_image_is_read(folder, tmp_path) -> None:
    target = folder / "train" / "ant" / "0000.png"
    (folder / "train" / "ant" / "link.png").symlink_to(target)
    assert len(load(folder, tmp_path, val_size=0).train) == 61


def test_an_image_past_the_decompression_bomb_guard_is_refused(
    folder, tmp_path, monkeypatch
) -> None:
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the images have 256 pixels
    with pytest.raises(UserError, match="decompression bombs") as info:
        load(folder, tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_image_is_named(folder, tmp_path) -> None:
    image = folder / "train" / "cat" / "0001.png"
    image.chmod(0)
    _refused(folder, tmp_path, r"0001\.png: cannot read the image \(Permission denied\)")


def test_a_named_pipe_given_as_data_is_refused(tmp_path) -> None:
    os.mkfifo(tmp_path / "data.tar")
    _refused(tmp_path / "data.tar", tmp_path, "a named pipe, not a folder or a .tar")


# -- temporary files of a writer that was killed ------------------------------------------------


def test_stale_temporary_files_in_the_cache_folder_are_removed(folder, tmp_path) -> None:
    import time

    from space._io import _host

    cache = tmp_path / "cache"
    cache.mkdir()
    host = _host()  # how temporary names write this host
    dead = subprocess_pid_that_exited()
    stale = cache / f".tiny-0123.pt.{dead}@{host}.abcd1234.tmp"  # a writer that is gone
    live = cache / f".tiny-0123.pt.{os.getpid()}@{host}.abcd1234.tmp"  # one still writing
    elsewhere = cache / f".tiny-0123.pt.{dead}@another-host.abcd1234.tmp"  # cannot be judged
    old = cache / ".tiny-0123.pt.k2j3h4g5.tmp"  # an older version's name, untouched for hours
    fresh = cache / ".tiny-4567.pt.q1w2e3r4.tmp"
    for path in (stale, live, elsewhere, old, fresh):
        path.write_bytes(b"half a cache")
    hours_ago = time.time() - 3 * 3600
    os.utime(old, (hours_ago, hours_ago))
    load(folder, tmp_path)
    left = {p.name for p in cache.iterdir()}
    assert stale.name not in left and old.name not in left
    assert {live.name, elsewhere.name, fresh.name} <= left


def subprocess_pid_that_exited() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- the validation size -------------------------------------------------------------------


def _largest_by_trying(counts: list[int]) -> int:
    """The largest validation size the balanced split accepts, by trying every size."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = torch.zeros(len(labels), 1, 1, 1, dtype=torch.uint8)
    classes = tuple(f"c{c}" for c in range(len(counts)))
    best = 0
    for v in range(1, sum(counts) + 1):
        try:
            split_validation(data_module.ImageSet(images, labels), classes, val_size=v, seed=0)
        except UserError:
            continue
        best = v
    return best


@pytest.mark.parametrize(
    "counts", [[24] * 10, [3, 3], [5, 2, 9], [9, 5, 2], [1, 4], [4, 1], [7, 7, 6], [2, 2, 2]]
)
def test_largest_validation_size_is_the_largest_the_split_takes(counts: list[int]) -> None:
    assert data_module.largest_val_size(counts) == _largest_by_trying(counts)


def test_default_validation_size_follows_the_data() -> None:
    default = data_module.default_val_size
    assert default([5000] * 10) == 5000  # CIFAR-10: the 5,000 its studies recorded
    assert default([10000] * 10) == 5000  # at most 5,000
    assert default([24] * 10) == 24  # 10% of 240
    assert default([4] * 10) == 10  # at least one per class (10% would be 4)
    assert default([2, 2, 2]) == 3
    # Never so many that a class is left without a training image; the remainder of a split
    # goes to the first classes, so [1, 5] takes none at all.
    assert default([5, 1]) == 1
    assert default([1, 5]) == 0


def test_small_folders_work_without_a_validation_size(tmp_path) -> None:
    root = make_image_folder(tmp_path / "small", train_per_class=24, test_per_class=2, size=8)
    ds = load_dataset(root, cache_dir=tmp_path / "cache")
    assert len(ds.val) == 7  # 10% of 72
    assert torch.bincount(ds.val.labels).tolist() == [3, 2, 2]


def test_a_validation_size_too_large_names_the_flag_and_what_works(tmp_path) -> None:
    root = make_image_folder(tmp_path / "small", train_per_class=24, test_per_class=2, size=8)
    with pytest.raises(UserError) as info:
        load_dataset(root, cache_dir=tmp_path / "cache", val_size=5000)
    message = str(info.value)
    assert "--val-size 5000" in message and "at most 69 works" in message
    assert not (tmp_path / "cache").exists()  # a refused split writes no cache
    assert len(load_dataset(root, cache_dir=tmp_path / "cache", val_size=69).val) == 69


def test_a_failed_download_leaves_no_folder(tmp_path, monkeypatch) -> None:
    import torchvision

    def offline(root, **kwargs):
        os.makedirs(root, exist_ok=True)  # as torchvision does before it downloads
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"partial")
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="cannot get CIFAR-10"):
        load_dataset("cifar10", cache_dir=cache)
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_cache_is_decoded_again_and_replaced(tmp_path, monkeypatch) -> None:
    root = make_image_folder(tmp_path / "tiny", train_per_class=4, test_per_class=2, size=8)
    first = load_dataset(root, cache_dir=tmp_path / "cache", val_size=0)
    [cache] = (tmp_path / "cache").rglob("*.pt")
    cache.write_bytes(b"damaged on disk")
    again = load_dataset(root, cache_dir=tmp_path / "cache", val_size=0)  # decoded afresh
    assert torch.equal(again.train.images, first.train.images)
    assert cache.stat().st_size > 1000  # rewritten whole, so the next run reads it
    calls = []
    real = data_module._decode_files
    monkeypatch.setattr(
        data_module, "_decode_files", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    load_dataset(root, cache_dir=tmp_path / "cache", val_size=0)
    assert calls == []  # read from the repaired cache


def test_macos_appledouble_files_are_not_images(tmp_path) -> None:
    root = make_image_folder(tmp_path / "tiny", train_per_class=4, test_per_class=2, size=8)
    for folder in (root / "train").iterdir():
        (folder / "._0000.png").write_bytes(b"\x00\x05\x16\x07 Mac metadata, no image")
    ds = load_dataset(root, cache_dir=tmp_path / "cache", val_size=0)
    assert len(ds.train) == 4 * len(CLASSES)
    tarball = make_tarball(root, tmp_path / "tiny.tar")
    assert len(load_dataset(tarball, cache_dir=tmp_path / "cache", val_size=0).train) == len(
        ds.train
    )
