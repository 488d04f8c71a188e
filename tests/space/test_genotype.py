from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings

from space import Augment, Genotype, GenotypeError, Stage
from tests.conftest import REFERENCES
from tests.strategies import genotypes

RESNET20 = Genotype(
    stages=(
        Stage(depth=3, width=16),
        Stage(depth=3, width=32, downsample=True),
        Stage(depth=3, width=64, downsample=True),
    ),
    augment=Augment(label_smoothing=0.1),
)


@given(genotypes())
@settings(max_examples=300, deadline=None)
def test_dict_toml_and_key_round_trip(g: Genotype) -> None:
    assert Genotype.from_dict(g.to_dict()) == g
    assert Genotype.from_key(g.key()) == g
    from space._toml import tomllib

    assert Genotype.from_dict(tomllib.loads(g.to_toml())) == g


@given(genotypes(), genotypes())
@settings(max_examples=200, deadline=None)
def test_key_is_canonical(a: Genotype, b: Genotype) -> None:
    assert (a.key() == b.key()) == (a == b)


def test_frozen_and_hashable() -> None:
    assert len({RESNET20, Genotype.from_key(RESNET20.key())}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        RESNET20.stem_width = 32  # type: ignore[misc]


def test_reference_files_load_and_key() -> None:
    g = Genotype.load(next(p for p in REFERENCES if p.stem == "resnet20"))
    assert g == RESNET20
    assert g.key() == "S16_B3x16_B3x32s_B3x64s~stride_cbn_avg_lin_h0~p4_f1_c0_none_m9_x0_k0_l0.1"


def test_save_then_load(tmp_path) -> None:
    path = tmp_path / "a.toml"
    RESNET20.save(path, header="ResNet-20\nfor a test")
    assert path.read_text().startswith("# ResNet-20\n# for a test\n")
    assert Genotype.load(path) == RESNET20


def test_stages_list_becomes_tuple() -> None:
    g = Genotype(stages=[Stage(depth=1, width=8)])  # type: ignore[arg-type]
    assert isinstance(g.stages, tuple)
    hash(g)


@pytest.mark.parametrize(
    ("change", "field", "value"),
    [
        (lambda d: d["stages"][0].update(depth=0), "stages[0].depth", "0"),
        (lambda d: d["stages"][1].update(width=0), "stages[1].width", "0"),
        (lambda d: d["stages"][1].update(width=-3), "stages[1].width", "-3"),
        (lambda d: d["stages"][2].update(block="dense"), "stages[2].block", "'dense'"),
        (lambda d: d["stages"][0].update(dropout=1.0), "stages[0].dropout", "1.0"),
        (lambda d: d["stages"][0].update(depth=2.5), "stages[0].depth", "2.5"),
        (lambda d: d["stages"][0].update(downsample="yes"), "stages[0].downsample", "'yes'"),
        (lambda d: d.update(pool="median"), "pool", "'median'"),
        (lambda d: d.update(head="mlp"), "head", "'mlp'"),
        (lambda d: d.update(shortcut="zero_pad"), "shortcut", "'zero_pad'"),
        (lambda d: d.update(downsample="dilate"), "downsample", "'dilate'"),
        (lambda d: d.update(stem_width=True), "stem_width", "True"),
        (lambda d: d.update(stages=[]), "stages", "0"),
        (lambda d: d["augment"].update(auto="autoaugment"), "augment.auto", "'autoaugment'"),
        (lambda d: d["augment"].update(label_smoothing=0.9), "augment.label_smoothing", "0.9"),
        (lambda d: d["augment"].update(mixup_alpha=float("nan")), "augment.mixup_alpha", "nan"),
        (lambda d: d["augment"].update(auto_magnitude=31), "augment.auto_magnitude", "31"),
    ],
)
def test_invalid_values_name_field_and_value(change, field: str, value: str) -> None:
    data = RESNET20.to_dict()
    change(data)
    with pytest.raises(GenotypeError) as info:
        Genotype.from_dict(data)
    message = str(info.value)
    assert field in message and value in message
    assert "must" in message  # and says what is allowed


def test_five_stages_rejected() -> None:
    data = RESNET20.to_dict()
    data["stages"] = data["stages"] + data["stages"]
    with pytest.raises(GenotypeError, match="1 to 4 stages, but got 6"):
        Genotype.from_dict(data)


@pytest.mark.parametrize("where", ["top", "stage", "augment"])
def test_unknown_keys_rejected(where: str) -> None:
    data = RESNET20.to_dict()
    target = {"top": data, "stage": data["stages"][0], "augment": data["augment"]}[where]
    target["colour"] = 1
    with pytest.raises(GenotypeError, match="unknown key 'colour'"):
        Genotype.from_dict(data)


def test_missing_stages_rejected() -> None:
    with pytest.raises(GenotypeError, match="no 'stages'"):
        Genotype.from_dict({"stem_width": 16})


@pytest.mark.parametrize("field", ["depth", "width"])
def test_stage_without_depth_or_width_rejected(field: str) -> None:
    data = RESNET20.to_dict()
    del data["stages"][1][field]
    with pytest.raises(GenotypeError, match=rf"stages\[1\] has no {field}"):
        Genotype.from_dict(data)


@pytest.mark.parametrize("key", ["", "S16", "X16_B3x16~stride_cbn_avg_lin_h0~p4", "S16_Q3x16~a~b"])
def test_bad_keys_rejected(key: str) -> None:
    with pytest.raises(GenotypeError, match="not a genotype key"):
        Genotype.from_key(key)
