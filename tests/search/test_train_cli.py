from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from search.augment import Normalization
from search.checkpoint import load_model, read_info
from search.data import load_dataset
from search.train import main as train_main
from search.training import TrainConfig, evaluate
from space import Genotype, build
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
    built = build(Genotype.load(ARCH), num_classes=3)  # the network itself, 3 classes
    assert metrics["params"] == sum(p.numel() for p in built.parameters())
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["train"]["epochs"] == 2
    umask = os.umask(0)
    os.umask(umask)
    for name in names:  # the model file too, which safetensors creates 0600 by itself
        assert os.stat(out / name).st_mode & 0o777 == 0o666 & ~umask, name
    assert config["versions"]["torch"] == torch.__version__
    assert Genotype.load(out / "genotype.toml") == Genotype.load(ARCH)
    assert len((out / "history.csv").read_text().strip().splitlines()) == 3


def test_model_file_holds_the_trained_weights(folder, tmp_path, monkeypatch) -> None:
    # Not the file against itself: the network as training left it against the file, and the
    # recorded test accuracy against one recomputed from the file.
    import search.experiment

    trained = {}
    real_save = search.experiment.save_model

    def save_and_keep(path, model, info) -> None:
        trained["model"] = copy.deepcopy(model).cpu().eval()
        real_save(path, model, info)

    monkeypatch.setattr(search.experiment, "save_model", save_and_keep)
    out = tmp_path / "run"
    assert train_main(args(folder, out)) == 0
    model, info = load_model(out / "model.safetensors")
    x = torch.randn(4, 3, 16, 16)
    # Every tensor bit for bit; the outputs only closely, since training left the network in
    # channels_last layout, whose convolutions sum in another order than the loaded network's.
    expected = trained["model"].state_dict()
    assert model.state_dict().keys() == expected.keys()
    assert all(torch.equal(t, expected[k]) for k, t in model.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), trained["model"](x), rtol=1e-5, atol=1e-5)
    assert info.classes == ("ant", "bee", "cat") and info.image_size == (16, 16)
    assert info.genotype == Genotype.load(ARCH)
    dataset = load_dataset(str(folder), val_size=9)
    plain, _ = evaluate(
        model,
        dataset.test,
        normalization=Normalization(info.mean, info.std),
        config=TrainConfig(),
        device=torch.device("cpu"),
        views=1,
    )
    assert plain == json.loads((out / "metrics.json").read_text())["test_acc"]


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
        (["--seed=-1"], "seed must be an integer in [0, 2**63)"),
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


def test_fresh_deletes_a_run_folder_and_nothing_else(folder, tmp_path, capsys) -> None:
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("three years of work")
    assert train_main(args(folder, out, "--fresh")) == 2
    assert "not a training run's (thesis.tex)" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "three years of work"
    run = tmp_path / "run"
    assert train_main(args(folder, run)) == 0
    first = (run / "metrics.json").read_bytes()
    assert train_main(args(folder, run, "--fresh")) == 0  # a run folder: trained again
    assert (run / "metrics.json").read_bytes() != first  # its timings, at least, differ


def test_out_that_is_a_file_is_refused(folder, tmp_path, capsys) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    assert train_main(args(folder, out)) == 2
    assert "is a file; expected a folder" in capsys.readouterr().err
    assert out.read_text() == "mine"


def test_without_a_validation_size_it_follows_the_data_and_a_resume_keeps_it(
    folder, tmp_path, capsys
) -> None:
    no_val = args(folder, tmp_path / "a")
    i = no_val.index("--val-size")
    del no_val[i : i + 2]
    assert train_main(no_val) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["settings"]["data"]["val_size"] == 7  # 10% of 72, the number recorded
    # A run made with --val-size 9 resumes without the flag: it keeps the size it recorded.
    assert train_main(args(folder, tmp_path / "b")) == 0
    capsys.readouterr()
    no_val[no_val.index(str(tmp_path / "a"))] = str(tmp_path / "b")
    assert train_main(no_val) == 0
    assert "holds a run with other settings" not in capsys.readouterr().err


def test_a_diverged_training_is_one_line_exit_1(folder, tmp_path, capsys) -> None:
    assert train_main(args(folder, tmp_path / "run", "--lr", "1e30")) == 1
    err = capsys.readouterr().err
    assert "error: training diverged" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
