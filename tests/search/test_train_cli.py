from __future__ import annotations

import json

import pytest
import torch

from search.checkpoint import load_model, read_info
from search.train import main as train_main
from space import Genotype
from space.errors import UserError
from tests.conftest import ROOT
from tests.images import make_image_folder

ARCH = ROOT / "configs" / "reference" / "mini-resnet.toml"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("d") / "tiny", train_per_class=24, size=16)


def args(folder, out, *extra: str) -> list[str]:
    return [
        str(ARCH),
        "--data",
        str(folder),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--val-size",
        "9",
        "--tta-views",
        "2",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def test_trains_and_writes_a_self_explaining_folder(folder, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert train_main(args(folder, out)) == 0
    printed = capsys.readouterr().out
    assert "test  accuracy" in printed and "with TTA (2 views)" in printed
    names = {p.name for p in out.iterdir()}
    assert names == {
        "config.json",
        "genotype.toml",
        "history.csv",
        "metrics.json",
        "model.safetensors",
    }
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and 0 <= metrics["test_acc"] <= 1
    assert metrics["params"] == 218_778 - (64 * 7 + 7)  # mini-resnet with a 3-class head
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["train"]["epochs"] == 2
    assert config["versions"]["torch"] == torch.__version__
    assert Genotype.load(out / "genotype.toml") == Genotype.load(ARCH)
    assert len((out / "history.csv").read_text().strip().splitlines()) == 3


def test_model_file_round_trip_gives_identical_logits(folder, tmp_path) -> None:
    out = tmp_path / "run"
    assert train_main(args(folder, out)) == 0
    model, info = load_model(out / "model.safetensors")
    again, _ = load_model(out / "model.safetensors")
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert info.classes == ("ant", "bee", "cat") and info.image_size == (16, 16)
    assert info.genotype == Genotype.load(ARCH)


def test_finished_run_is_not_trained_again(folder, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    assert train_main(args(folder, out)) == 0
    import search.experiment

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(search.experiment, "fit", no_training)
    assert train_main(args(folder, out)) == 0
    # Other settings in the same folder: refused, nothing changed.
    before = (out / "metrics.json").read_bytes()
    assert train_main(args(folder, out, "--seed", "5")) == 2
    assert "other settings (train.seed: 0 there, 5 now)" in capsys.readouterr().err
    assert (out / "metrics.json").read_bytes() == before


def test_killed_run_resumes(folder, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    import search.experiment

    real_fit = search.experiment.fit

    def fit_killed_after_first_epoch(*a, **k):
        user_callback = k["on_epoch"]

        def on_epoch(stats):
            user_callback(stats)
            raise KeyboardInterrupt

        return real_fit(*a, **{**k, "on_epoch": on_epoch})

    monkeypatch.setattr(search.experiment, "fit", fit_killed_after_first_epoch)
    assert train_main(args(folder, out)) == 130
    assert (out / "state.pt").exists() and not (out / "metrics.json").exists()
    monkeypatch.setattr(search.experiment, "fit", real_fit)
    assert train_main(args(folder, out)) == 0
    assert not (out / "state.pt").exists()
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2
    assert len((out / "history.csv").read_text().strip().splitlines()) == 3


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--epochs", "0"], "epochs must be an integer >= 1"),
        (["--lr", "-1"], "lr must be a number >= 0"),
        (["--device", "tpu"], "--device must be auto, cpu, cuda"),
        (["--tta-views", "11"], "tta_views must be in [1, 10]"),
        (["--subset", "0"], "subset must be an integer >= 1"),
    ],
)
def test_bad_input_is_one_line_and_creates_nothing(folder, tmp_path, capsys, extra, fragment):
    out = tmp_path / "run"
    assert train_main(args(folder, out, *extra)) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_corrupt_and_foreign_model_files(folder, tmp_path) -> None:
    out = tmp_path / "run"
    assert train_main(args(folder, out)) == 0
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((out / "model.safetensors").read_bytes()[:300])
    with pytest.raises(UserError, match="truncated"):
        load_model(truncated)
    with pytest.raises(UserError, match="no such model file"):
        read_info(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(UserError, match="without this project's architecture record"):
        load_model(plain)
