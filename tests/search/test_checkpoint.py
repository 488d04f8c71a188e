"""Model files: a checksum of the weights catches damage on disk, and a record that contradicts
itself is refused with one line instead of a traceback or nan."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from search.checkpoint import CHECKSUM_KEY, METADATA_KEY, ModelInfo, load_model, save_model
from search.predict import main as predict_main
from space import Genotype, build
from space.errors import UserError
from tests.conftest import ROOT
from tests.images import make_image

ARCH = ROOT / "configs" / "reference" / "mini-resnet.toml"


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    genotype = Genotype.load(ARCH)
    torch.manual_seed(0)
    model = build(genotype, num_classes=3)
    info = ModelInfo(
        genotype=genotype,
        classes=("ant", "bee", "cat"),
        in_channels=3,
        image_size=(8, 8),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    path = tmp_path / "model.safetensors"
    save_model(path, model, info)
    return path


def parts(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118


def test_a_model_loads_with_its_checksum_checked(model_file: Path) -> None:
    tensors, metadata = parts(model_file)
    assert len(metadata[CHECKSUM_KEY]) == 64
    model, _ = load_model(model_file)
    for name, value in model.state_dict().items():
        assert torch.equal(value, tensors[name])


def test_weights_damaged_on_disk_are_caught(model_file: Path, tmp_path: Path) -> None:
    data = bytearray(model_file.read_bytes())
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_size])
    name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    start = 8 + header_size + header[name]["data_offsets"][0]
    data[start + 3] ^= 0x7F  # one byte of one float: a plausible number, or nan
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(bytes(data))
    with pytest.raises(UserError, match="the weights are damaged") as info:
        load_model(damaged)
    assert "\n" not in str(info.value)


def test_a_file_written_before_the_checksum_still_loads(model_file: Path, tmp_path: Path) -> None:
    tensors, metadata = parts(model_file)
    del metadata[CHECKSUM_KEY]
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata=metadata)
    model, _ = load_model(old)
    for name, value in model.state_dict().items():
        assert torch.equal(value, tensors[name])
    # Without a checksum, weights that are not numbers are still refused.
    name = next(k for k, t in tensors.items() if t.is_floating_point() and t.numel() > 1)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = math.nan
    save_file(tensors, str(old), metadata=metadata)
    with pytest.raises(UserError, match="hold nan or inf"):
        load_model(old)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"classes": ["ant"]}, "1 class(es); a classifier has at least 2"),
        ({"classes": []}, "0 class(es)"),
        ({"classes": ["ant", "ant", "cat"]}, "the same class name twice"),
        ({"image_size": [0, 0]}, "image size 0x0"),
        ({"image_size": [8, -3]}, "image size 8x-3"),
        ({"std": [0.25, 0.0, 0.25]}, "every standard deviation must be > 0"),
        ({"std": [0.25, 0.25]}, "2 std value(s) for 3 channel(s)"),
        ({"mean": [0.5, float("nan"), 0.5]}, "is not a list of finite numbers"),
        ({"in_channels": 0}, "in_channels 0"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_a_record_that_contradicts_itself_is_one_line(
    model_file: Path, tmp_path: Path, change: dict, fragment: str
) -> None:
    tensors, metadata = parts(model_file)
    record = json.loads(metadata[METADATA_KEY])
    record.update(change)
    metadata[METADATA_KEY] = json.dumps(record)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(UserError) as info:
        load_model(bad)
    message = str(info.value)
    assert "contradicts itself" in message and fragment in message, message
    assert "\n" not in message


def test_predict_on_a_damaged_model_says_so(model_file: Path, tmp_path: Path, capsys) -> None:
    import numpy as np

    image = tmp_path / "x.png"
    make_image(0, 8, np.random.default_rng(0)).save(image)
    assert predict_main([str(model_file), str(image)]) == 0
    capsys.readouterr()
    data = bytearray(model_file.read_bytes())
    data[-5] ^= 0xFF
    model_file.write_bytes(bytes(data))
    assert predict_main([str(model_file), str(image)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the weights are damaged" in err[0]
