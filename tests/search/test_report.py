"""search.report and search.artifacts: the front, the figures, the files, the dashboard records.

The front is checked against a brute-force dominance test on hand-made points, the figures on
hand-made trials; the files, the dashboard records and the artifacts on a tiny real search.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import plotly.graph_objects as go
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.trial import FrozenTrial, TrialState, create_trial

from search.artifacts import (
    STUDY_PREFIX,
    FolderArtifactStore,
    artifact_names,
    trial_artifacts,
    upload_trial_artifacts,
)
from search.figures import (
    ReferencePoint,
    StudyView,
    accuracy_figure,
    budget_figure,
    curves_figure,
    pareto_front,
)
from search.report import (
    GRAPH_OBJECT_ID,
    publish,
    saved_figure_json,
    top_frame,
    trials_frame,
    write_png,
)
from search.report import main as report_main
from search.run import main as run_main
from space import Genotype
from tests.search.searchkit import search_args

HAS_BROWSER = any(Path(p).exists() for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser"))


# -- the front --------------------------------------------------------------------------------


def dominated(p: tuple[float, float], q: tuple[float, float]) -> bool:
    """q dominates p: no more parameters, no less accuracy, and better in one."""
    return q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1])


@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), max_size=40))
@settings(max_examples=300, deadline=None)
def test_front_is_the_set_no_point_dominates(points: list[tuple[int, int]]) -> None:
    # Small integer grids make ties (same size, same accuracy, equal points) common.
    expected = {i for i, p in enumerate(points) if not any(dominated(p, q) for q in points)}
    front = pareto_front(points)
    assert set(front) == expected and len(front) == len(expected)
    xs = [points[i][0] for i in front]
    assert xs == sorted(xs)


def test_front_of_a_known_set() -> None:
    points = [(100, 0.5), (200, 0.7), (150, 0.4), (300, 0.7), (250, 0.9), (90, 0.1), (200, 0.7)]
    assert pareto_front(points) == [5, 0, 1, 6, 4]
    assert pareto_front([]) == []


# -- figures and tables on hand-made trials ---------------------------------------------------

BUDGET = 400_000


def made(
    number: int,
    params: int,
    value: float | None,
    state: TrialState = TrialState.COMPLETE,
    *,
    budget: int = BUDGET,
    **attrs: object,
) -> FrozenTrial:
    status = {
        TrialState.COMPLETE: "complete: 3 epochs",
        TrialState.PRUNED: "pruned: pruned by Hyperband after epoch 1",
        TrialState.FAIL: "failed: boom",
    }[state]
    curve = (
        [value * 0.6, value * 0.8, value][: 3 if state == TrialState.COMPLETE else 1]
        if value
        else []
    )
    user_attrs = {
        "params": params,
        "macs": params * 150,
        "budget_share": params / budget,
        "key": f"K{number}",
        "status": status,
        "curve": curve,
        "epochs_run": len(curve),
        "genotype": Genotype.load(
            Path(__file__).parents[2] / "configs" / "reference" / "resnet20.toml"
        ).to_dict(),
    }
    user_attrs.update(attrs)
    trial = create_trial(
        state=state,
        value=value if state != TrialState.FAIL else None,
        user_attrs=user_attrs,
        intermediate_values={i + 1: a for i, a in enumerate(curve)},
        constraints={"params_over_budget": params - budget},
    )
    trial.number = number
    return trial


def made_view(
    name: str = "hand-400k", budget: int = BUDGET, trials: list | None = None
) -> StudyView:
    trials = trials if trials is not None else hand_trials(budget)
    # search.retrain keeps test results in the study attribute "retrained", by trial number.
    retrained = {1: {"test_acc": 0.84, "test_acc_tta": 0.845, "epochs": 30, "seeds": [0]}}
    return StudyView(
        name=name, budget=budget, trials=tuple(trials), max_epochs=3, retrained=retrained
    )


def hand_trials(budget: int = BUDGET) -> list[FrozenTrial]:
    b = budget
    return [
        made(0, int(0.50 * b), 0.80, budget=b),
        made(1, int(0.60 * b), 0.85, budget=b),  # retrained (see made_view)
        made(2, int(0.70 * b), 0.83, budget=b),  # dominated by 1
        made(3, int(0.90 * b), 0.90, budget=b),
        made(4, int(0.55 * b), 0.95, TrialState.PRUNED, budget=b),  # partial: never on the front
        made(5, int(0.95 * b), 0.90, budget=b, duplicate_of=3),  # a repeat: left out
        made(6, int(1.20 * b), None, TrialState.PRUNED, budget=b, status="rejected: over budget"),
        made(7, int(0.40 * b), None, TrialState.FAIL, budget=b),
    ]


def trace(fig, name: str):
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, [t.name for t in fig.data]
    return matches[0]


def test_pareto_figure_marks_the_front_of_complete_trials_and_the_budget() -> None:
    view = made_view()
    fig = accuracy_figure([view], measure="params")
    front = trace(fig, "Pareto front (fewest parameters)")
    # Brute force over the complete, feasible, non-duplicate trials.
    pool = [t for t in view.trials if t.number in (0, 1, 2, 3)]
    expected = [
        t
        for t in pool
        if not any(
            dominated((t.user_attrs["params"], t.value), (u.user_attrs["params"], u.value))
            for u in pool
        )
    ]
    assert [c[0] for c in front.customdata] == [t.number for t in expected] == [0, 1, 3]
    assert list(front.x) == [t.user_attrs["params"] for t in expected]
    assert list(front.y) == [t.value for t in expected]
    assert [c[0] for c in trace(fig, "complete").customdata] == [3, 1, 2, 0]
    assert [c[0] for c in trace(fig, "pruned (accuracy when stopped)").customdata] == [4]
    stars = trace(fig, "test accuracy (retrained)")
    assert list(stars.y) == [0.84] and stars.customdata[0][0] == 1
    assert list(stars.text) == ["#1"]  # no choice recorded: no star says it is the choice
    # The budget line is a vertical shape at the budget, across the plot.
    (line,) = fig.layout.shapes
    assert line.x0 == line.x1 == BUDGET and (line.y0, line.y1, line.yref) == (0, 1, "paper")
    assert fig.layout.xaxis.type == "linear"
    assert "trial %{customdata[0]}" in front.hovertemplate and "K3" in str(front.customdata)


def test_overlay_of_two_budgets_draws_one_line_each_on_a_log_axis() -> None:
    small, large = (
        made_view("c10-400k", 400_000),
        made_view("c10-5m", 5_000_000, hand_trials(5_000_000)),
    )
    fig = accuracy_figure([small, large], measure="params")
    assert fig.layout.xaxis.type == "log"
    # A line shape is in data coordinates on a log axis too; its label, an annotation, is at
    # log10 of the value there (plotly.js' rule for annotations).
    assert sorted((s.x0, s.x1) for s in fig.layout.shapes) == [
        (400_000, 400_000),
        (5_000_000, 5_000_000),
    ]
    labels = {a.text: a.x for a in fig.layout.annotations}
    assert labels == {"budget 400k": math.log10(400_000), "budget 5M": math.log10(5_000_000)}
    assert {t.name for t in fig.data} >= {
        "c10-400k: Pareto front (fewest parameters)",
        "c10-5m: Pareto front (fewest parameters)",
    }
    macs = accuracy_figure([small, large], measure="macs")
    assert not macs.layout.shapes and macs.layout.xaxis.type == "log"


def test_test_accuracy_from_the_retrain_record() -> None:
    trials = [t for t in hand_trials() if t.number != 1]
    record = {3: {"test_acc": 0.88, "test_acc_tta": 0.89, "epochs": 200, "seeds": [0, 1]}}
    view = StudyView(name="s", budget=BUDGET, trials=tuple(trials), retrained=record)
    stars = trace(accuracy_figure([view]), "test accuracy (retrained)")
    assert list(stars.y) == [0.88] and list(stars.x) == [360_000] and list(stars.text) == ["#3"]
    chosen = StudyView(
        name="s",
        budget=BUDGET,
        trials=tuple(trials),
        retrained={**record, 2: {"test_acc": 0.86}},
        stages={"choice": {"trial": 2, "name": "trial-2"}},
    )
    stars = trace(accuracy_figure([chosen]), "test accuracy (retrained)")
    assert sorted(stars.text) == ["#2, the choice", "#3"]
    frame = trials_frame([view]).set_index("number")
    assert frame.loc[3, "test_acc_tta"] == 0.89 and frame.loc[3, "retrain_epochs"] == 200
    assert frame.loc[3, "retrain_seeds"] == "[0, 1]" and math.isnan(frame.loc[0, "test_acc"])
    top = top_frame(view, top=2)
    assert list(top["test acc"]) == ["0.8800", ""] and list(top["trial"]) == [3, 2]


def test_curves_and_budget_figures() -> None:
    view = made_view()
    curves = curves_figure([view], top=2)
    named = [t.name for t in curves.data]
    assert named[0] == "other trials" and len(named) == 3
    assert named[1].startswith("#3 90.0%") and named[2].startswith("#1 85.0%")
    hist = budget_figure([view])
    shares = {t.name: sorted(t.x) for t in hist.data}
    assert shares["rejected"] == [1.2] and shares["complete"] == [0.5, 0.6, 0.7, 0.9, 0.95]
    assert [s.x0 for s in hist.layout.shapes] == [1.0]


def test_table_has_a_row_per_trial_and_the_genotype_columns() -> None:
    frame = trials_frame([made_view()])
    assert list(frame["number"]) == list(range(8))
    assert {"stem_width", "num_stages", "stage3_width", "augment_flip", "shortcut"} <= set(frame)
    assert frame.loc[1, "test_acc"] == 0.84 and math.isnan(frame.loc[0, "test_acc"])
    assert bool(frame.loc[6, "rejected"]) and frame.loc[6, "params_over_budget"] == 80_000
    assert frame.loc[0, "stage3_width"] == 64


# -- a tiny real search -----------------------------------------------------------------------


@contextlib.contextmanager
def working_dir(path: Path) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)
        yield


def run_report(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = report_main(list(args))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    with working_dir(tmp), contextlib.redirect_stdout(io.StringIO()):
        assert run_main(search_args(tmp, trials=4)) == 0
    return tmp


@pytest.fixture(scope="module")
def reported(searched: Path) -> tuple[Path, str]:
    with working_dir(searched):
        code, out = run_report("--storage", "sqlite:///results/tiny.db", "--top", "3")
    assert code == 0, out
    return searched, out


def load(tmp: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp}/results/tiny.db")


def test_report_writes_figures_table_and_top(reported: tuple[Path, str]) -> None:
    tmp, out = reported
    folder = tmp / "results" / "tiny" / "report"
    study = load(tmp)
    for name in ("pareto", "macs", "curves", "budget"):
        html = (folder / f"{name}.html").read_text()
        # plotly.js itself is in the page (it opens offline), not a link to a CDN.
        assert "<script src=" not in html and len(html) > 1_000_000
        png = folder / f"{name}.png"
        if HAS_BROWSER:
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert "no PNG" in out and not png.exists()
    frame = pd.read_csv(folder / "trials.csv")
    trials = study.get_trials()
    assert list(frame["number"]) == [t.number for t in trials]
    assert list(frame["params"]) == [t.user_attrs["params"] for t in trials]
    assert list(frame["state"]) == [t.state.name for t in trials]
    assert list(frame["stem_width"]) == [t.user_attrs["genotype"]["stem_width"] for t in trials]
    assert list(frame["augment_crop_padding"]) == [
        t.user_attrs["genotype"]["augment"]["crop_padding"] for t in trials
    ]
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert "top 3" in out and best.user_attrs["key"] in out
    assert not list(folder.glob(".*")), "temporary files left behind"


def test_report_saves_dashboard_figure_note_and_artifacts_once(reported: tuple[Path, str]) -> None:
    tmp, _ = reported
    from optuna_dashboard import get_note

    def state() -> tuple[dict, list[str]]:
        study = load(tmp)
        attrs = study._storage.get_study_system_attrs(study._study_id)
        return attrs, sorted(p.name for p in (tmp / "results/tiny/artifacts").iterdir())

    before, files = state()
    graphs = {k.split(":")[2] for k in before if k.startswith("dashboard:plot_data:")}
    assert graphs == {GRAPH_OBJECT_ID}
    study = load(tmp)
    figure = json.loads(saved_figure_json(study))
    assert figure["layout"]["shapes"][0]["x0"] == 20_000  # the tiny search's budget
    assert "## tiny" in get_note(study) and "Pareto front" in get_note(study)
    trained = [t for t in study.get_trials() if artifact_names(t)]
    assert trained
    for t in trained:
        names = trial_artifacts(t, before)
        assert sorted(names) == sorted(artifact_names(t))
    assert len(files) == sum(len(artifact_names(t)) for t in trained)

    # Again, on the same trials: nothing is written, nothing is added.
    with working_dir(tmp):
        code, out = run_report("--storage", "sqlite:///results/tiny.db")
    assert code == 0 and "artifacts uploaded for 0 trial(s)" in out
    after, files_after = state()
    assert files_after == files
    assert after == before  # same figure, same note (same version), same artifact records


def test_report_from_another_folder_finds_the_search_artifacts(
    reported: tuple[Path, str], tmp_path: Path
) -> None:
    # The search recorded where it keeps the artifacts; a report run elsewhere must use them,
    # not upload a second set into its own results/ and leave the dashboard's records dangling.
    tmp, _ = reported
    before = sorted(p.name for p in (tmp / "results/tiny/artifacts").iterdir())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with working_dir(elsewhere):
        code, out = run_report("--storage", f"sqlite:///{tmp}/results/tiny.db")
    assert code == 0 and "artifacts uploaded for 0 trial(s)" in out
    assert f"{tmp}/results/tiny/artifacts" in out
    assert list(elsewhere.iterdir()) == []  # the report went beside the study's artifacts
    assert sorted(p.name for p in (tmp / "results/tiny/artifacts").iterdir()) == before
    study = load(tmp)
    attrs = study._storage.get_study_system_attrs(study._study_id)
    for t in study.get_trials():
        for meta in trial_artifacts(t, attrs).values():
            assert (tmp / "results/tiny/artifacts" / meta["artifact_id"]).is_file()


def test_publishing_a_new_figure_replaces_the_old_one() -> None:
    from optuna_dashboard import get_note

    study = optuna.create_study(direction="maximize")
    small = accuracy_figure([made_view(trials=hand_trials()[:2])])
    large = accuracy_figure([made_view()])  # more trials: more chunks of 2045 characters
    publish(study, small, "first")
    publish(study, large, "second")
    publish(study, small, "second")  # fewer chunks than before: the extra ones are emptied
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert {k.split(":")[2] for k in attrs if k.startswith("dashboard:plot_data:")} == {
        GRAPH_OBJECT_ID
    }
    assert saved_figure_json(study) == small.to_json()
    assert get_note(study) == "second" and attrs["dashboard:note_ver"] == 2


def test_artifacts_hold_the_curve_and_the_summary(reported: tuple[Path, str]) -> None:
    tmp, _ = reported
    study = load(tmp)
    attrs = study._storage.get_study_system_attrs(study._study_id)
    store = FolderArtifactStore([tmp / "results/tiny/artifacts"])
    t = next(t for t in study.get_trials() if t.state == TrialState.COMPLETE)
    metas = trial_artifacts(t, attrs)
    with store.open_reader(metas[f"trial-{t.number}-curve.png"]["artifact_id"]) as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with store.open_reader(metas[f"trial-{t.number}-summary.txt"]["artifact_id"]) as f:
        text = f.read().decode()
    assert f"Total params: {t.user_attrs['params']:,}" in text
    assert t.user_attrs["key"] in text
    assert metas[f"trial-{t.number}-summary.txt"]["mimetype"] == "text/plain"


def test_a_lost_artifact_file_is_uploaded_again(searched: Path, tmp_path: Path) -> None:
    shutil.copy(searched / "results" / "tiny.db", tmp_path / "tiny.db")
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/tiny.db")
    t = next(t for t in study.get_trials() if artifact_names(t))
    folder = tmp_path / "artifacts"
    kwargs = {"artifact_dir": folder, "num_classes": 3, "image_size": (8, 8)}
    first = upload_trial_artifacts(study, t, **kwargs)
    # A fresh copy of the study may already name the report's artifacts: those files are
    # missing here, so everything is uploaded.
    assert sorted(first) == sorted(artifact_names(t))
    assert upload_trial_artifacts(study, study.trials[t.number], **kwargs) == []
    lost = next(folder.iterdir())
    lost.unlink()
    again = upload_trial_artifacts(study, study.trials[t.number], **kwargs)
    assert len(again) == 1
    attrs = study._storage.get_study_system_attrs(study._study_id)
    live = trial_artifacts(study.trials[t.number], attrs)
    assert sorted(live) == sorted(artifact_names(t))
    assert lost.name not in {m["artifact_id"] for m in live.values()}
    assert json.loads(attrs[f"{STUDY_PREFIX}{t._trial_id}:{lost.name}"]) is None


def test_a_running_trial_uploads_through_optuna(tmp_path: Path) -> None:
    # Called from inside the objective, the trial still runs: Optuna's upload_artifact records
    # the files on the trial itself; once it has finished, nothing is uploaded twice.
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    g = Genotype.load(Path(__file__).parents[2] / "configs" / "reference" / "resnet20.toml")
    trial.set_user_attr("genotype", g.to_dict())
    trial.set_user_attr("key", g.key())
    trial.set_user_attr("curve", [0.3, 0.5])
    kwargs = {"artifact_dir": tmp_path, "num_classes": 10, "image_size": (32, 32)}
    running = study._storage.get_trial(trial._trial_id)
    names = upload_trial_artifacts(study, running, **kwargs)
    assert sorted(names) == ["trial-0-curve.png", "trial-0-summary.txt"]
    metas = optuna.artifacts.get_all_artifact_meta(running, storage=study._storage)
    assert sorted(m.filename for m in metas) == sorted(names)
    study.tell(trial, 0.5)
    assert upload_trial_artifacts(study, study.trials[0], **kwargs) == []
    assert len(list(tmp_path.iterdir())) == 2


# -- bad input --------------------------------------------------------------------------------


def make_sqlite_study(path: Path, name: str, trials: list[FrozenTrial]) -> str:
    url = f"sqlite:///{path}"
    study = optuna.create_study(storage=url, study_name=name, direction="maximize")
    study.set_user_attr("budget", BUDGET)
    for t in trials:
        study.add_trial(t)
    return url


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "/"
        for p in sorted(folder.rglob("*"))
    }


BAD = {
    "unknown-study": (
        ["--storage", "sqlite:///inputs/two.db", "--study-name", "nope"],
        "no such study",
    ),
    "several-studies": (["--storage", "sqlite:///inputs/two.db"], "holds 2 studies (a, b)"),
    "empty-study": (["--storage", "sqlite:///inputs/empty.db"], "has no complete trial"),
    "no-study": (["--storage", "sqlite:///inputs/none.db"], "without Optuna's tables"),
    "missing-file": (["--storage", "sqlite:///inputs/missing.db"], "no such file"),
    "not-sqlite": (["--storage", "sqlite:///inputs/junk.db"], "not an SQLite database"),
    "missing-journal": (["--storage", "journal:///inputs/missing.journal"], "no such file"),
    "bad-url": (["--storage", "mysql://x/y"], "--storage must be"),
    "unreachable-server": (
        ["--storage", "postgresql+psycopg://u:secret@127.0.0.1:1/optuna"],
        "cannot connect",
    ),
    "pairs": (
        [
            "--storage",
            "sqlite:///inputs/two.db",
            "--storage",
            "sqlite:///inputs/empty.db",
            "--study-name",
            "a",
            "--study-name",
            "b",
            "--study-name",
            "c",
        ],
        "one --study-name per --storage",
    ),
    "top-zero": (["--storage", "sqlite:///inputs/two.db", "--top", "0"], "--top must be"),
}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    inputs = tmp_path_factory.mktemp("bad") / "inputs"
    inputs.mkdir()
    url = make_sqlite_study(inputs / "two.db", "a", hand_trials())
    optuna.create_study(storage=url, study_name="b")
    make_sqlite_study(
        inputs / "empty.db",
        "only-pruned",
        [made(0, 1000, 0.5, TrialState.PRUNED), made(1, 2000, None, TrialState.FAIL)],
    )
    import sqlite3

    with contextlib.closing(sqlite3.connect(inputs / "none.db")) as db:
        db.execute("CREATE TABLE other (x INTEGER)")
        db.commit()
    (inputs / "junk.db").write_text("not a database\n" * 100)
    return inputs


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_creates_nothing(
    case: str, bad_inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args, expect = BAD[case]
    shutil.copytree(bad_inputs, tmp_path / "inputs")
    before = snapshot(tmp_path)
    with working_dir(tmp_path):
        try:
            code = report_main(args)
        except SystemExit as exc:  # argparse's own checks
            code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and expect in err, err
    assert "secret" not in err
    assert snapshot(tmp_path) == before  # no results/ folder, no file touched


@pytest.mark.parametrize("drops", [1, 2])
def test_a_figure_kaleido_silently_drops_is_rendered_again(tmp_path, monkeypatch, drops) -> None:
    # plotly's write_images returns without error when kaleido failed one figure; the report
    # must notice the missing file, render it again, and say so if it is still missing.
    import plotly.io as pio

    calls = []

    def flaky_write_images(figs, paths, **kwargs) -> None:
        calls.append([Path(p).stem for p in paths])
        for p in paths:
            if Path(p).stem == "pareto" and len(calls) <= drops:
                continue  # kaleido's error, swallowed
            Path(p).write_bytes(b"\x89PNG\r\n\x1a\n")

    monkeypatch.setattr(pio, "write_images", flaky_write_images)
    figures = {"pareto": go.Figure(), "macs": go.Figure()}
    paths, reason = write_png(figures, tmp_path)
    assert calls[0] == ["pareto", "macs"] and calls[1] == ["pareto"]  # only the missing one again
    if drops == 1:
        assert reason is None and sorted(p.name for p in paths) == ["macs.png", "pareto.png"]
    else:
        assert [p.name for p in paths] == ["macs.png"] and "no PNG of pareto" in reason
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_reference_names_stay_inside_the_figure() -> None:
    # A name is written left of its diamond, except near the left edge, where it would run off
    # the figure (dwnext-100k at 99k beside 400k networks was cut to "ext-100k").
    view = made_view()
    refs = [
        ReferencePoint(study=view.name, name="tiny", params=1_000, macs=10**6, test_acc=0.3),
        ReferencePoint(study=view.name, name="big", params=BUDGET, macs=10**8, test_acc=0.5),
    ]
    diamonds = trace(accuracy_figure([view], references=refs), "reference network, test accuracy")
    assert list(diamonds.text) == ["tiny", "big"]
    assert list(diamonds.textposition) == ["bottom right", "bottom left"]
    # On a log axis the share is taken in log space: 1k of a 1k-400k span is the left edge.
    macs = accuracy_figure([view], measure="macs", references=refs)
    sides = trace(macs, "reference network, test accuracy").textposition
    assert list(sides) == ["bottom right", "bottom left"]
