"""Bad input, every command: exit code 2, a line or two on stderr naming what is wrong and what
is expected, no traceback, and nothing created or changed.

Each case runs in an empty working folder; the inputs it needs (a corrupt tarball, a config with
an unknown key...) are made in a separate folder first, and neither folder may change.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.images import make_image_folder, make_tarball
from tests.search.searchkit import tiny_space

RESNET20 = ROOT / "configs" / "reference" / "resnet20.toml"


@dataclass(frozen=True)
class Case:
    id: str
    module: str  # the command: python -m <module>
    args: Callable[[Path], list[str]]  # given the inputs folder
    expect: str  # a fragment of the one-line message


def search(*extra: str) -> Callable[[Path], list[str]]:
    def args(inputs: Path) -> list[str]:
        return [
            "--data",
            str(inputs / "data"),
            "--space",
            str(inputs / "space.toml"),
            "--budget",
            "20k",
            "--trials",
            "2",
            "--epochs",
            "1",
            "--val-size",
            "6",
            "--device",
            "cpu",
            "--no-progress",
            *extra,
        ]

    return args


def with_input(name: str) -> Callable[[Path], str]:
    return lambda inputs: str(inputs / name)


def search_with(*extra: str | Callable[[Path], str]) -> Callable[[Path], list[str]]:
    """Search flags whose values may depend on the inputs folder."""
    return lambda inputs: search()(inputs) + [e(inputs) if callable(e) else e for e in extra]


def train_with(*extra: str | Callable[[Path], str]) -> Callable[[Path], list[str]]:
    return lambda inputs: [
        str(RESNET20),
        "--data",
        str(inputs / "data"),
        "--epochs",
        "1",
        "--val-size",
        "6",
        "--device",
        "cpu",
        "--no-progress",
        *[e(inputs) if callable(e) else e for e in extra],
    ]


CASES = [
    # budgets
    Case("run-budget-abc", "search.run", search("--budget", "abc"), "budget must be a number"),
    Case("run-budget-negative", "search.run", search("--budget=-5"), "positive number"),
    Case("run-budget-zero", "search.run", search("--budget", "0"), "positive number"),
    Case("run-budget-absurd", "search.run", search("--budget", "1e30"), "at most 1e10"),
    Case("run-budget-below-space", "search.run", search("--budget", "10"), "below every network"),
    Case(
        "budget-cmd-bad-budget",
        "space.budget",
        lambda i: [str(RESNET20), "--budget", "5X"],
        "budget must be",
    ),
    # counts and ranges
    Case(
        "run-trials-zero", "search.run", search("--trials", "0"), "trials must be an integer >= 1"
    ),
    Case(
        "run-epochs-zero", "search.run", search("--epochs", "0"), "epochs must be an integer >= 1"
    ),
    Case("run-trials-not-int", "search.run", search("--trials", "ten"), "invalid int value"),
    Case("run-timeout-negative", "search.run", search("--timeout=-1"), "timeout must be > 0"),
    Case(
        "run-min-epochs-over-epochs",
        "search.run",
        search_with("--config", with_input("min-epochs.toml")),
        "min_epochs (3) must be at most",
    ),
    Case("run-study-name-path", "search.run", search("--study-name", "a/b"), "study_name must be"),
    Case("run-unknown-space", "search.run", search("--space", "nope"), "no such preset"),
    Case("train-epochs-zero", "search.train", train_with("--epochs", "0"), "epochs must be"),
    # config files
    Case(
        "run-config-missing",
        "search.run",
        search_with("--config", with_input("none.toml")),
        "none.toml: no such file",
    ),
    Case(
        "run-config-syntax",
        "search.run",
        search_with("--config", with_input("syntax.toml")),
        "TOML syntax error",
    ),
    Case(
        "run-config-unknown-key",
        "search.run",
        search_with("--config", with_input("unknown-key.toml")),
        "unknown key 'colour'",
    ),
    Case(
        "run-config-unknown-table",
        "search.run",
        search_with("--config", with_input("unknown-table.toml")),
        "unknown table or key 'model'",
    ),
    Case(
        "run-config-wrong-type",
        "search.run",
        search_with("--config", with_input("wrong-type.toml")),
        "trials must be an integer",
    ),
    Case(
        "run-config-out-of-range",
        "search.run",
        search_with("--config", with_input("out-of-range.toml")),
        "lr must be a number >= 0",
    ),
    Case(
        "run-space-unknown-choice",
        "search.run",
        search_with("--space", with_input("bad-space.toml")),
        "unknown choice 'colour'",
    ),
    Case(
        "budget-cmd-unknown-key",
        "space.budget",
        lambda i: [str(i / "arch-unknown-key.toml"), "--budget", "5M"],
        "unknown key 'colour'",
    ),
    Case(
        "budget-cmd-invalid-value",
        "space.budget",
        lambda i: [str(i / "arch-depth-zero.toml"), "--budget", "5M"],
        "stages[0].depth",
    ),
    Case(
        "train-arch-missing",
        "search.train",
        lambda i: [str(i / "none.toml"), "--data", "x"],
        "no such file",
    ),
    # data
    Case(
        "run-data-missing",
        "search.run",
        search_with("--data", with_input("nowhere")),
        "no such file or folder",
    ),
    Case(
        "run-data-empty-folder",
        "search.run",
        search_with("--data", with_input("empty")),
        "no train/ folder",
    ),
    Case(
        "run-data-wrong-layout",
        "search.run",
        search_with("--data", with_input("flat")),
        "no train/ folder",
    ),
    Case(
        "run-data-no-classes",
        "search.run",
        search_with("--data", with_input("no-classes")),
        "train: no class folders",
    ),
    Case(
        "run-data-empty-class",
        "search.run",
        search_with("--data", with_input("empty-class")),
        "train/bee",
    ),
    Case(
        "run-data-classes-differ",
        "search.run",
        search_with("--data", with_input("classes-differ")),
        "different classes",
    ),
    Case(
        "run-data-corrupt-image",
        "search.run",
        search_with("--data", with_input("corrupt")),
        "cannot decode the image",
    ),
    Case(
        "run-data-corrupt-tarball",
        "search.run",
        search_with("--data", with_input("broken.tar.gz")),
        "cannot read the tarball",
    ),
    Case(
        "train-data-missing",
        "search.train",
        train_with("--data", with_input("nowhere")),
        "no such file or folder",
    ),
    # storage
    Case(
        "run-storage-malformed",
        "search.run",
        search("--storage", "mysql://x/y"),
        "--storage must be sqlite:///",
    ),
    Case("run-storage-no-file", "search.run", search("--storage", "sqlite:///"), "names no file"),
    Case(
        "run-storage-not-sqlite",
        "search.run",
        search_with("--storage", lambda i: f"sqlite:///{i}/not-a-db.db"),
        "not an SQLite database",
    ),
    Case(
        "run-storage-other-sqlite",
        "search.run",
        search_with("--storage", lambda i: f"sqlite:///{i}/other.db"),
        "without Optuna's tables",
    ),
    Case(
        "run-storage-unreachable",
        "search.run",
        search("--storage", "postgresql+psycopg://nas:secret@127.0.0.1:9/nas"),
        "cannot connect",
    ),
    Case(
        "run-sqlite-two-workers", "search.run", search("--workers", "2"), "SQLite takes one writer"
    ),
    # devices and folders
    Case("run-device-unknown", "search.run", search("--device", "tpu"), "--device must be auto"),
    Case(
        "train-device-unknown", "search.train", train_with("--device", "gpu0"), "--device must be"
    ),
    Case(
        "run-results-unwritable",
        "search.run",
        search("--results", "/proc/nas-results"),
        "cannot write there",
    ),
    Case(
        "run-results-a-file",
        "search.run",
        search_with("--results", with_input("syntax.toml")),
        "is a file; expected a folder",
    ),
    Case("train-seed-negative", "search.train", train_with("--seed=-1"), "seed must be"),
    Case(
        "train-fresh-not-a-run-folder",
        "search.train",
        train_with("--out", with_input("empty-class"), "--fresh"),
        "not a training run's",
    ),
    Case(
        "budget-cmd-stage-without-depth",
        "space.budget",
        lambda i: [str(i / "arch-no-depth.toml"), "--budget", "5M"],
        "stages[0] has no depth",
    ),
    Case(
        "train-out-unwritable",
        "search.train",
        train_with("--out", "/proc/nas-out"),
        "cannot write there",
    ),
]
CASES += [
    # retrain
    Case("retrain-nothing", "search.retrain", lambda i: ["--no-progress"], "nothing to retrain"),
    Case(
        "retrain-unknown-study",
        "search.retrain",
        lambda i: ["--storage", f"sqlite:///{i}/study/results/tiny.db", "--study-name", "nope"],
        "no study 'nope'",
    ),
    Case(
        "retrain-missing-storage",
        "search.retrain",
        lambda i: ["--storage", f"sqlite:///{i}/none.db", "--study-name", "tiny"],
        "no such file",
    ),
    Case(
        "retrain-no-feasible-trial",
        "search.retrain",
        lambda i: ["--storage", f"sqlite:///{i}/empty.db", "--study-name", "empty"],
        "no complete trial within its budget",
    ),
    Case(
        "retrain-top-zero",
        "search.retrain",
        lambda i: [
            "--storage",
            f"sqlite:///{i}/study/results/tiny.db",
            "--study-name",
            "tiny",
            "--top",
            "0",
        ],
        "--top must be an integer >= 1",
    ),
    Case(
        "retrain-arch-without-data",
        "search.retrain",
        lambda i: ["--arch", str(RESNET20)],
        "needs --data",
    ),
    # checkpoints and model files
    Case(
        "predict-missing-model",
        "search.predict",
        lambda i: [str(i / "none.safetensors"), str(i / "image.png")],
        "no such model file",
    ),
    Case(
        "predict-truncated-model",
        "search.predict",
        lambda i: [str(i / "truncated.safetensors"), str(i / "image.png")],
        "truncated",
    ),
    Case(
        "predict-model-of-another-architecture",
        "search.predict",
        lambda i: [str(i / "other-arch.safetensors"), str(i / "image.png")],
        "weights of another architecture",
    ),
    Case(
        "predict-not-our-model",
        "search.predict",
        lambda i: [str(i / "foreign.safetensors"), str(i / "image.png")],
        "without this project's architecture record",
    ),
    Case(
        "predict-corrupt-image",
        "search.predict",
        lambda i: [str(i / "train" / "model.safetensors"), str(i / "bad.png")],
        "cannot decode the image",
    ),
    Case(
        "export-truncated-model",
        "search.export",
        lambda i: [str(i / "truncated.safetensors")],
        "truncated",
    ),
    Case(
        "train-state-without-config",
        "search.train",
        train_with("--out", with_input("orphan-state")),
        "without the config.json",
    ),
    # reports and the dashboard
    Case(
        "report-unknown-study",
        "search.report",
        lambda i: ["--storage", f"sqlite:///{i}/study/results/tiny.db", "--study-name", "nope"],
        "no such study",
    ),
    Case(
        "report-empty-study",
        "search.report",
        lambda i: ["--storage", f"sqlite:///{i}/empty.db"],
        "no complete trial",
    ),
    Case(
        "report-unreachable-storage",
        "search.report",
        lambda i: ["--storage", "postgresql+psycopg://nas:secret@127.0.0.1:9/nas"],
        "cannot connect",
    ),
    Case(
        "dashboard-no-study-file",
        "search.dashboard",
        lambda i: ["--results", str(i / "empty")],
        "no study",
    ),
]
LONG = "n" * 300  # a name longer than any file system takes (255 bytes)
CASES += [
    # storages that are not a storage of this Optuna: refused before anything is written
    Case(
        "run-storage-lookalike-tables",
        "search.run",
        search_with("--storage", lambda i: f"sqlite:///{i}/lookalike.db"),
        "tables named like Optuna's",
    ),
    Case(
        "run-storage-older-schema",
        "search.run",
        search_with("--storage", lambda i: f"sqlite:///{i}/old-schema.db"),
        "an Optuna storage of an older schema",
    ),
    Case(
        "run-storage-journal-junk",
        "search.run",
        search_with("--storage", lambda i: f"journal:///{i}/junk.journal"),
        "line 2 (byte",
    ),
    Case(
        "run-storage-not-a-journal",
        "search.run",
        search_with("--storage", lambda i: f"journal:///{i}/syntax.toml"),
        "not an Optuna journal file",
    ),
    Case(
        "run-storage-port-not-a-number",
        "search.run",
        search("--storage", "postgresql+psycopg://nas@db-host:abc/nas"),
        "the port 'abc' is not a number",
    ),
    Case(
        "report-storage-lookalike-tables",
        "search.report",
        lambda i: ["--storage", f"sqlite:///{i}/lookalike.db"],
        "tables named like Optuna's",
    ),
    Case(
        "retrain-storage-lookalike-tables",
        "search.retrain",
        lambda i: ["--storage", f"sqlite:///{i}/lookalike.db", "--study-name", "tiny"],
        "tables named like Optuna's",
    ),
    Case(
        "dashboard-storage-lookalike-tables",
        "search.dashboard",
        lambda i: ["--storage", f"sqlite:///{i}/lookalike.db"],
        "tables named like Optuna's",
    ),
    # refused resumes write nothing: no journal record, no data cache
    Case(
        "run-resume-other-settings-journal",
        "search.run",
        search_with("--storage", lambda i: f"journal:///{i}/study.journal", "--study-name", "tiny"),
        "was made with other settings",
    ),
    Case(
        "run-resume-other-data",
        "search.run",
        search_with(
            "--storage",
            lambda i: f"sqlite:///{i}/study/results/tiny.db",
            "--study-name",
            "tiny",
            "--data",
            with_input("fresh-data"),
        ),
        "was made with other settings",
    ),
    Case(
        "run-val-size-too-large",
        "search.run",
        search_with("--data", with_input("fresh-data"), "--val-size", "500"),
        "--val-size 500 takes 167 images",
    ),
    Case(
        "train-val-size-too-large",
        "search.train",
        train_with("--data", with_input("fresh-data"), "--val-size", "500"),
        "at most 27 works with this data",
    ),
    # entries named like images that are not images
    Case(
        "run-data-named-pipe",
        "search.run",
        search_with("--data", with_input("pipe-data")),
        "a named pipe named like an image",
    ),
    Case(
        "run-data-folder-named-like-an-image",
        "search.run",
        search_with("--data", with_input("folder-data")),
        "a folder named like an image",
    ),
    Case(
        "run-data-dangling-link",
        "search.run",
        search_with("--data", with_input("link-data")),
        "which does not exist",
    ),
    # names and paths too long for the system
    Case("run-study-name-too-long", "search.run", search("--study-name", LONG), "at most 120"),
    Case(
        "run-journal-name-too-long",
        "search.run",
        search("--storage", f"journal:///{LONG[:230]}.journal"),
        "this file system allows at most",
    ),
    Case(
        "run-data-name-too-long",
        "search.run",
        search("--data", LONG, "--study-name", "long"),
        "allows at most",
    ),
    Case(
        "run-study-name-from-a-long-data-name",
        "search.run",
        search("--data", LONG[:200]),
        "give a shorter --study-name",
    ),
    Case("train-out-too-long", "search.train", train_with("--out", LONG), "allows at most"),
    Case(
        "export-out-too-long",
        "search.export",
        lambda i: [str(i / "train" / "model.safetensors"), "--out", LONG],
        "allows at most",
    ),
    Case(
        "report-out-too-long",
        "search.report",
        lambda i: ["--storage", f"sqlite:///{i}/study/results/tiny.db", "--out", LONG],
        "allows at most",
    ),
    # model files damaged on disk, or whose record contradicts itself
    Case(
        "predict-damaged-weights",
        "search.predict",
        lambda i: [str(i / "damaged.safetensors"), str(i / "image.png")],
        "the weights are damaged",
    ),
    Case(
        "predict-one-class",
        "search.predict",
        lambda i: [str(i / "one-class.safetensors"), str(i / "image.png")],
        "a classifier has at least 2",
    ),
    Case(
        "export-zero-std",
        "search.export",
        lambda i: [str(i / "zero-std.safetensors")],
        "every standard deviation must be > 0",
    ),
    Case(
        "dashboard-artifact-dir-a-file",
        "search.dashboard",
        lambda i: [
            "--storage",
            f"sqlite:///{i}/study/results/tiny.db",
            "--artifact-dir",
            str(i / "syntax.toml"),
        ],
        "--artifact-dir",
    ),
]
STAGE_KEY = "arch-stage-colour.toml: unknown key 'colour' in stages[0]"
CASES += [
    # architecture files, whatever reads them: refused naming the file (a campaign reads several)
    Case(
        "retrain-arch-stage-unknown-key",
        "search.retrain",
        lambda i: ["--arch", str(i / "arch-stage-colour.toml"), "--data", str(i / "data")],
        STAGE_KEY,
    ),
    Case(
        "campaign-reference-stage-unknown-key",
        "search.campaign",
        lambda i: ["--config", str(i / "campaign-bad-reference.toml")],
        STAGE_KEY,
    ),
    Case(
        "budget-cmd-stages-one-table",
        "space.budget",
        lambda i: [str(i / "arch-stages-table.toml"), "--budget", "5M"],
        "arch-stages-table.toml: stages must be a list of tables",
    ),
    Case(
        "train-arch-stage-not-a-table",
        "search.train",
        lambda i: [str(i / "arch-stage-number.toml"), "--data", str(i / "data")],
        "arch-stage-number.toml: stages[0] must be a table",
    ),
    Case(
        "budget-cmd-stage-depth-a-string",
        "space.budget",
        lambda i: [str(i / "arch-depth-string.toml"), "--budget", "5M"],
        "arch-depth-string.toml: stages[0].depth must be an integer in [1, 64], but got '3'",
    ),
    Case(
        "predict-model-stage-unknown-key",
        "search.predict",
        lambda i: [str(i / "stage-colour.safetensors"), str(i / "image.png")],
        "damaged architecture record (unknown key 'colour' in stages[0]",
    ),
    # search-space presets
    Case(
        "run-space-fractional-int-step",
        "search.run",
        search_with("--space", with_input("half-step-space.toml")),
        "params.depth.step must be a positive whole number",
    ),
]
if not torch.cuda.is_available():
    CASES.append(
        Case(
            "run-device-cuda-without-gpu",
            "search.run",
            search("--device", "cuda"),
            "no CUDA GPU is visible",
        )
    )


def make_inputs(root: Path) -> Path:
    make_image_folder(root / "data", train_per_class=10, test_per_class=2, size=8)
    _trained_inputs(root)
    tiny_space(root / "space.toml")
    tiny_space(root / "bad-space.toml", colour=[1])
    (root / "syntax.toml").write_text("[search\nbudget = 1\n")
    (root / "unknown-key.toml").write_text("[search]\ncolour = 'red'\n")
    (root / "unknown-table.toml").write_text("[model]\nwidth = 3\n")
    (root / "wrong-type.toml").write_text("[search]\ntrials = 'many'\n")
    (root / "out-of-range.toml").write_text("[train]\nlr = -0.1\n")
    (root / "min-epochs.toml").write_text("[search]\nmin_epochs = 3\n")
    text = RESNET20.read_text()
    (root / "arch-unknown-key.toml").write_text("colour = 1\n" + text)
    (root / "arch-depth-zero.toml").write_text(text.replace("depth = 3", "depth = 0", 1))
    (root / "arch-no-depth.toml").write_text(text.replace("depth = 3", "", 1))
    (root / "arch-stage-colour.toml").write_text(
        text.replace("depth = 3", "depth = 3\ncolour = 1", 1)
    )
    (root / "arch-stages-table.toml").write_text("[stages]\ndepth = 3\nwidth = 16\n")
    (root / "arch-stage-number.toml").write_text("stages = [3]\n")
    (root / "arch-depth-string.toml").write_text(text.replace("depth = 3", 'depth = "3"', 1))
    (root / "campaign-bad-reference.toml").write_text(
        f'[campaign]\ndevice = "cpu"\n[data]\nsource = "{root / "data"}"\n[[budgets]]\n'
        f'budget = "400k"\nreferences = ["resnet20", "{root / "arch-stage-colour.toml"}"]\n'
    )
    tiny_space(root / "half-step-space.toml", depth={"low": 1, "high": 2, "step": 0.5})
    (root / "not-a-db.db").write_text("hello, not a database\n")
    with contextlib.closing(sqlite3.connect(root / "other.db")) as db:  # someone else's data
        db.execute("CREATE TABLE invoices (id INTEGER)")
        db.commit()
    (root / "empty").mkdir()
    flat = root / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes((root / "data" / "train" / "ant" / "0000.png").read_bytes())
    (root / "no-classes" / "train").mkdir(parents=True)
    (root / "no-classes" / "test").mkdir()
    empty_class = make_image_folder(root / "empty-class", train_per_class=4, test_per_class=1)
    for f in (empty_class / "train" / "bee").iterdir():
        f.unlink()
    differ = make_image_folder(root / "classes-differ", train_per_class=4, test_per_class=1)
    (differ / "test" / "cat").rename(differ / "test" / "dog")
    corrupt = make_image_folder(root / "corrupt", train_per_class=4, test_per_class=1, size=8)
    (corrupt / "train" / "bee" / "0002.png").write_bytes(b"not an image")
    tarball = make_tarball(root / "data", root / "broken.tar.gz")
    tarball.write_bytes(tarball.read_bytes()[:200])
    # Never loaded, so that a run refused after decoding it would leave a new cache.
    make_image_folder(root / "fresh-data", train_per_class=10, test_per_class=2, size=8, seed=7)
    pipe = make_image_folder(root / "pipe-data", train_per_class=4, test_per_class=1, size=8)
    os.mkfifo(pipe / "train" / "bee" / "0100.png")
    folder = make_image_folder(root / "folder-data", train_per_class=4, test_per_class=1, size=8)
    (folder / "test" / "cat" / "extra.png").mkdir()
    link = make_image_folder(root / "link-data", train_per_class=4, test_per_class=1, size=8)
    (link / "train" / "ant" / "gone.png").symlink_to(root / "nowhere.png")
    _storages(root)
    return root


def _storages(root: Path) -> None:
    """Files that look like storages and are not, and a journal copy of the tiny study."""
    import optuna

    with contextlib.closing(sqlite3.connect(root / "lookalike.db")) as db:
        db.execute("CREATE TABLE studies (study_id INTEGER, study_name TEXT)")
        db.execute("CREATE TABLE trials (trial_id INTEGER)")
        db.commit()
    (root / "old-schema.db").write_bytes((root / "empty.db").read_bytes())
    with contextlib.closing(sqlite3.connect(root / "old-schema.db")) as db:
        db.execute("UPDATE alembic_version SET version_num = 'v3.0.0.d'")
        db.commit()
    lines = (root / "not-a-db.db").read_text()
    (root / "junk.journal").write_text(
        '{"op_code":0,"worker_id":"w","study_name":"x","directions":[1]}\n'
        + lines
        + '{"op_code":0,"worker_id":"w","study_name":"y","directions":[1]}\n'
    )
    from search.storage import open_journal

    optuna.copy_study(
        from_study_name="tiny",
        from_storage=f"sqlite:///{root}/study/results/tiny.db",
        to_storage=open_journal(root / "study.journal"),
    )


def _trained_inputs(root: Path) -> None:
    """A tiny study, an empty one, a trained model and damaged copies of it."""
    import json
    import os

    import optuna
    from safetensors import safe_open
    from safetensors.torch import save_file

    from search.run import main as run_main
    from search.train import main as train_main
    from space import Genotype
    from tests.images import make_image
    from tests.search.searchkit import search_args

    (root / "study").mkdir()
    cwd = os.getcwd()
    os.chdir(root / "study")
    try:
        assert run_main(search_args(root / "study", trials=2)) == 0
    finally:
        os.chdir(cwd)
    empty = optuna.create_study(storage=f"sqlite:///{root}/empty.db", study_name="empty")
    empty.set_user_attr("budget", 1000)
    empty.set_user_attr("settings", {"data": {"source": str(root / "data")}})
    arch = ROOT / "configs" / "reference" / "mini-resnet.toml"
    args = [
        str(arch),
        "--data",
        str(root / "data"),
        "--epochs",
        "1",
        "--val-size",
        "6",
        "--batch-size",
        "8",
        "--tta-views",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(root / "train"),
    ]
    assert train_main(args) == 0
    model = root / "train" / "model.safetensors"
    (root / "truncated.safetensors").write_bytes(model.read_bytes()[:400])
    save_file({"w": torch.zeros(3)}, str(root / "foreign.safetensors"))
    with safe_open(str(model), framework="pt") as f:  # the weights under another genotype
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        metadata = dict(f.metadata())
    record = json.loads(metadata["budget_nas"])
    record["genotype"] = Genotype.load(RESNET20).to_dict()
    metadata["budget_nas"] = json.dumps(record)
    save_file(tensors, str(root / "other-arch.safetensors"), metadata=metadata)
    damaged = bytearray(model.read_bytes())
    damaged[-6] ^= 0x55  # a byte of the last tensor
    (root / "damaged.safetensors").write_bytes(bytes(damaged))
    colour = json.loads(metadata["budget_nas"])["genotype"]
    colour["stages"][0]["colour"] = 1  # an unknown key in a stage table
    for name, change in (
        ("one-class", {"classes": ["ant"]}),
        ("zero-std", {"std": [0.2, 0, 0.2]}),
        ("stage-colour", {"genotype": colour}),
    ):
        changed = dict(metadata)
        changed["budget_nas"] = json.dumps({**json.loads(metadata["budget_nas"]), **change})
        save_file(tensors, str(root / f"{name}.safetensors"), metadata=changed)
    make_image(0, 8, __import__("numpy").random.default_rng(0)).save(root / "image.png")
    (root / "bad.png").write_bytes(b"not a png")
    (root / "orphan-state").mkdir()
    (root / "orphan-state" / "state.pt").write_bytes(b"half a checkpoint")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return make_inputs(tmp_path_factory.mktemp("inputs"))


def snapshot(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(folder.rglob("*"))
    }


def run_module(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, inputs: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    before = snapshot(inputs)
    proc = run_module(case.module, case.args(inputs), work)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert case.expect in proc.stderr, proc.stderr
    assert list(work.iterdir()) == [], "created files in the working folder"
    assert snapshot(inputs) == before, "changed the inputs"
