from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
import torch

import search.experiment
from search.checkpoint import load_model
from search.export import main as export_main
from search.predict import main as predict_main
from search.retrain import main as retrain_main
from search.retrain import retrained_results, select_trials
from search.run import main as run_main
from space import Genotype
from tests.conftest import ROOT
from tests.images import make_image
from tests.search.searchkit import search_args

REFERENCE = ROOT / "configs" / "reference" / "mini-resnet.toml"


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished tiny study (4 trials) in its own folder."""
    root = tmp_path_factory.mktemp("study")
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert run_main(search_args(root, trials=4)) == 0
    finally:
        os.chdir(cwd)
    return root


def retrain_args(root, out, *extra: str, export: bool = False) -> list[str]:
    return [
        "--storage",
        f"sqlite:///{root}/results/tiny.db",
        "--study-name",
        "tiny",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--tta-views",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        *([] if export else ["--no-export"]),
        "--out",
        str(out),
        *extra,
    ]


def study_of(root) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{root}/results/tiny.db")


def test_retrain_best_trial_end_to_end(searched, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = retrain_main(
        retrain_args(searched, out, "--top", "1", "--seeds", "2", "--arch", str(REFERENCE))
    )
    assert code == 0
    printed = capsys.readouterr().out
    study = study_of(searched)
    best = select_trials(study, 20_000, 1)[0]
    folder = out / "retrain" / best.name
    assert {p.name for p in folder.iterdir()} == {"seed-0", "seed-1", "summary.json"}
    for seed in ("seed-0", "seed-1"):
        names = {p.name for p in (folder / seed).iterdir()}
        assert {
            "model.safetensors",
            "genotype.toml",
            "config.json",
            "metrics.json",
            "history.csv",
        } <= names
        assert "state.pt" not in names
        assert Genotype.load(folder / seed / "genotype.toml") == best.genotype
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["epochs"] == 2
    accs = [r["test_acc"] for r in summary["runs"]]
    assert summary["test_acc"] == pytest.approx(sum(accs) / 2)
    # The leaderboard has the searched trial and the reference, with the budget.
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(board["source"]) == {"search", "reference"}
    assert set(board["name"]) == {best.name, "mini-resnet"}
    assert (board["budget"] == 20_000).all() and (board["seeds"] == 2).all()
    for column in ("params", "test_acc", "test_acc_tta", "epochs", "train_minutes", "val_acc"):
        assert column in board.columns
    # Written back into the study, and shown in the terminal.
    record = retrained_results(study)
    assert record[best.trial]["test_acc"] == pytest.approx(summary["test_acc"])
    assert "mini-resnet" in printed and "leaderboard" in printed


def test_reference_arch_without_a_study(searched, tmp_path) -> None:
    out = tmp_path / "refs"
    args = [
        "--arch",
        str(REFERENCE),
        "--data",
        str(searched / "data"),
        "--budget",
        "400k",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--tta-views",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--no-export",
        "--out",
        str(out),
    ]
    assert retrain_main(args) == 0
    board = pd.read_csv(out / "leaderboard.csv")
    assert board.loc[0, "name"] == "mini-resnet" and board.loc[0, "budget"] == 400_000


def test_finished_model_is_not_trained_again(searched, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    assert retrain_main(retrain_args(searched, out)) == 0

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(search.experiment, "fit", no_training)
    assert retrain_main(retrain_args(searched, out)) == 0
    with pytest.raises(AssertionError, match="trained again"):
        retrain_main(retrain_args(searched, out, "--force"))


def test_killed_retrain_resumes_to_the_same_result(searched, tmp_path, monkeypatch) -> None:
    whole = tmp_path / "whole"
    assert retrain_main(retrain_args(searched, whole, "--epochs", "3")) == 0
    killed = tmp_path / "killed"
    real_fit = search.experiment.fit

    def fit_killed_after_two(*a, **k):
        callback = k["on_epoch"]

        def on_epoch(stats):
            callback(stats)
            if stats.epoch == 2:
                raise KeyboardInterrupt

        return real_fit(*a, **{**k, "on_epoch": on_epoch})

    monkeypatch.setattr(search.experiment, "fit", fit_killed_after_two)
    assert retrain_main(retrain_args(searched, killed, "--epochs", "3")) == 130
    [history] = (killed / "retrain").glob("*/seed-0/history.csv")
    before = history.read_text().splitlines()
    trained = []

    def fit_counting(*a, **k):
        callback = k["on_epoch"]
        return real_fit(
            *a, **{**k, "on_epoch": lambda st: (trained.append(st.epoch), callback(st))}
        )

    monkeypatch.setattr(search.experiment, "fit", fit_counting)
    assert retrain_main(retrain_args(searched, killed, "--epochs", "3")) == 0
    assert trained == [3]  # only the epoch the kill left undone
    after = history.read_text().splitlines()
    assert len(before) == 3 and after[:3] == before and len(after) == 4  # rows kept, timings too
    [a] = (whole / "retrain").glob("*/seed-0/model.safetensors")
    [b] = (killed / "retrain").glob("*/seed-0/model.safetensors")
    model_a, _ = load_model(a)
    model_b, _ = load_model(b)
    for p, q in zip(model_a.state_dict().values(), model_b.state_dict().values(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_exports_agree_with_pytorch(searched, tmp_path, capsys) -> None:
    # A retrain exports by default: TorchScript and ONNX beside each model, same logits.
    out = tmp_path / "out"
    assert retrain_main(retrain_args(searched, out, export=True)) == 0
    [model_file] = (out / "retrain").glob("*/seed-0/model.safetensors")
    model, info = load_model(model_file)
    x = torch.randn(5, info.in_channels, *info.image_size)
    with torch.no_grad():
        expected = model.eval()(x)
        scripted = torch.jit.load(str(model_file.parent / "model.torchscript.pt"))(x)
    assert torch.allclose(scripted, expected, atol=1e-5)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_file.parent / "model.onnx"))
    (from_onnx,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.allclose(torch.from_numpy(from_onnx), expected, atol=1e-4)
    # The command does the same into another folder and reports both checks.
    capsys.readouterr()
    assert export_main([str(model_file), "--out", str(tmp_path / "again")]) == 0
    assert {p.name for p in (tmp_path / "again").iterdir()} == {
        "model.torchscript.pt",
        "model.onnx",
    }
    assert capsys.readouterr().out.count("max |diff|") == 2


def test_predict_prints_top_k_class_names(searched, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert retrain_main(retrain_args(searched, out)) == 0
    [model_file] = (out / "retrain").glob("*/seed-0/model.safetensors")
    import numpy as np

    images = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        make_image(i, 12, np.random.default_rng(i)).save(path)  # another size: resized
        images.append(str(path))
    capsys.readouterr()
    assert predict_main([str(model_file), *images, "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        ranked = line.split(": ", 1)[1].split("  ")
        assert len(ranked) == 2
        names = [r.split()[0] for r in ranked]
        probs = [float(r.split()[1]) for r in ranked]
        assert set(names) <= {"ant", "bee", "cat"} and probs == sorted(probs, reverse=True)


def _copy(source, target):
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    return target


def _plain_study(tmp) -> str:
    """A study of someone's own Optuna code: trials, but none of the search's records."""
    url = f"sqlite:///{tmp}/plain.db"
    study = optuna.create_study(storage=url, study_name="plain", direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    return url


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (
            lambda root, tmp: [
                "--study-name",
                "nope",
                "--storage",
                f"sqlite:///{root}/results/tiny.db",
            ],
            "no study 'nope'",
        ),
        (
            lambda root, tmp: ["--study-name", "tiny", "--storage", f"sqlite:///{tmp}/none.db"],
            "no such file",
        ),
        (lambda root, tmp: [], "nothing to retrain"),
        (lambda root, tmp: ["--arch", str(REFERENCE)], "needs --data"),
        (lambda root, tmp: ["--arch", str(tmp / "missing.toml"), "--data", "x"], "no such file"),
        (
            lambda root, tmp: [
                "--arch",
                str(REFERENCE),
                "--arch",
                str(_copy(REFERENCE, tmp / "other" / REFERENCE.name)),
                "--data",
                str(root / "data"),
            ],
            "--arch files share a name (mini-resnet)",
        ),
        (
            lambda root, tmp: [*retrain_args(root, tmp / "o")[:4], "--budget", "5M"],
            "differs from the study's budget",
        ),
        (
            lambda root, tmp: ["--study-name", "plain", "--storage", _plain_study(tmp)],
            "was not made by python -m search.run",
        ),
    ],
)
def test_retrain_bad_input(searched, tmp_path, capsys, make, fragment) -> None:
    assert (
        retrain_main([*make(searched, tmp_path), "--no-progress", "--out", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() and not (tmp_path / "none.db").exists()


def test_no_feasible_trial(tmp_path, capsys) -> None:
    storage = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(storage=storage, study_name="empty", direction="maximize")
    study.set_user_attr("budget", 1000)
    study.set_user_attr("settings", {"data": {"source": "cifar10"}})
    assert retrain_main(["--storage", storage, "--study-name", "empty", "--no-progress"]) == 2
    assert "no complete trial within its budget" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["missing", "truncated", "foreign"])
def test_predict_bad_model_files(searched, tmp_path, capsys, damage) -> None:
    image = tmp_path / "x.png"
    import numpy as np

    make_image(0, 8, np.random.default_rng(0)).save(image)
    path = tmp_path / "model.safetensors"
    if damage == "truncated":
        out = tmp_path / "out"
        assert retrain_main(retrain_args(searched, out)) == 0
        [good] = (out / "retrain").glob("*/seed-0/model.safetensors")
        path.write_bytes(good.read_bytes()[:500])
    elif damage == "foreign":
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(3)}, str(path))
    capsys.readouterr()
    assert predict_main([str(path), str(image)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_recipe_comes_from_the_study_and_the_whole_training_set_is_used(tmp_path, capsys) -> None:
    # A study searched on a subset with batch 8: the retrain keeps the optimiser settings
    # suited to that data, but trains on every training image, validation ones included.
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert run_main(search_args(tmp_path, "--subset", "3", "--lr", "0.05", trials=2)) == 0
    finally:
        os.chdir(cwd)
    out = tmp_path / "out"
    args = retrain_args(tmp_path, out)
    i = args.index("--batch-size")
    del args[i : i + 2]  # the study's batch size, not the retrain's flag
    assert retrain_main(args) == 0
    assert "batch 8, lr 0.05 (the study's)" in capsys.readouterr().out
    [config] = (out / "retrain").glob("*/seed-0/config.json")
    recorded = json.loads(config.read_text())
    assert recorded["settings"]["train"]["batch_size"] == 8
    assert recorded["settings"]["train"]["lr"] == 0.05
    assert recorded["settings"]["data"]["subset"] is None
    assert "30 train / 0 val" in recorded["dataset"]  # every image: 10 per class


def test_a_failed_export_is_reported_and_tried_again(searched, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    import search.export

    real_onnx = search.export.export_onnx

    def broken(*a, **k):
        raise RuntimeError("exporter cannot handle this op")

    monkeypatch.setattr(search.export, "export_onnx", broken)
    assert retrain_main(retrain_args(searched, out, export=True)) == 0  # the model is kept
    assert "export failed (RuntimeError: exporter cannot handle this op)" in capsys.readouterr().err
    [run] = (out / "retrain").glob("*/seed-0")
    assert (run / "model.torchscript.pt").exists() and not (run / "model.onnx").exists()
    monkeypatch.setattr(search.export, "export_onnx", real_onnx)
    monkeypatch.setattr(search.export, "TOLERANCE", -1.0)  # every check fails
    assert retrain_main(retrain_args(searched, out, export=True)) == 0
    assert "model.onnx differs from PyTorch" in capsys.readouterr().err
    assert not (run / "model.onnx").exists()  # not left to be used unchecked
    monkeypatch.setattr(search.export, "TOLERANCE", 1e-4)
    assert retrain_main(retrain_args(searched, out, export=True)) == 0
    assert (run / "model.onnx").exists()


def test_a_rerun_that_trains_nothing_leaves_the_notes_alone(searched, tmp_path) -> None:
    import optuna_dashboard

    out = tmp_path / "out"
    assert retrain_main(retrain_args(searched, out)) == 0
    study = study_of(searched)
    [trial] = [t for t in study.trials if t.number in retrained_results(study)]
    handle = optuna.trial.Trial(study, trial._trial_id)
    note = optuna_dashboard.get_note(handle)
    versions = {
        k: v
        for k, v in study._storage.get_study_system_attrs(study._study_id).items()
        if "note_ver" in k
    }
    assert note.startswith("## Retrained")
    assert retrain_main(retrain_args(searched, out)) == 0
    again = study_of(searched)
    assert {
        k: v
        for k, v in again._storage.get_study_system_attrs(again._study_id).items()
        if "note_ver" in k
    } == versions


def test_a_run_folder_of_other_settings_is_refused_before_any_training(
    searched, tmp_path, capsys, monkeypatch
) -> None:
    # The second model's folder holds a run of other settings: refused at the start, not after
    # the first model trained, and the data (a fresh folder) is not cached for the refused run.
    from tests.images import make_image_folder

    data = make_image_folder(tmp_path / "fresh", train_per_class=10, test_per_class=2, size=8)
    out = tmp_path / "o"
    other = out / "retrain" / "mini-resnet" / "seed-0"
    other.mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"settings": {"name": "something else"}}))
    trained = []
    monkeypatch.setattr(search.experiment, "fit", lambda *a, **k: trained.append(1))
    args = retrain_args(searched, out, "--arch", str(REFERENCE), "--data", str(data))
    assert retrain_main(args) == 2
    err = capsys.readouterr().err
    assert "holds a run with other settings" in err and len(err.strip().splitlines()) == 1
    assert trained == []
    assert not (tmp_path / ".nas-cache").exists()
    assert sorted(p.name for p in (out / "retrain").iterdir()) == ["mini-resnet"]


def test_a_data_source_recorded_relative_to_the_root_is_found_from_elsewhere(
    searched, tmp_path, monkeypatch, capsys
) -> None:
    # A committed study records its data relative to the project root (data/cifar10-jpeg);
    # here the study's own folder plays the root, and the retrain runs from another folder.
    import shutil

    from search import provenance

    copy = tmp_path / "study"
    (copy / "results").mkdir(parents=True)
    shutil.copyfile(searched / "results" / "tiny.db", copy / "results" / "tiny.db")
    assert (
        provenance.portable_database(
            copy / "results" / "tiny.db",
            lambda text: text.replace(f'"source": "{searched}/data"', '"source": "data"'),
        )
        == 1
    )
    assert study_of(copy).user_attrs["dataset"]["source"] == "data"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = retrain_args(copy, tmp_path / "out", "--top", "1", "--epochs", "1")
    # a project root without data/ (this checkout may hold one)
    monkeypatch.setattr(provenance, "ROOT", tmp_path / "empty-root")
    assert retrain_main(args) == 2  # the project root holds no data/: not found, one line
    assert "'data': no such file or folder" in capsys.readouterr().err
    monkeypatch.setattr(provenance, "ROOT", searched)
    assert retrain_main(args) == 0
