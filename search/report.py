"""Plots, tables and the dashboard view of one or several finished (or running) searches.

    python -m search.report --storage sqlite:///results/cifar10-400k.db
    python -m search.report --storage sqlite:///results/cifar10-400k.db \\
        --storage sqlite:///results/cifar10-5m.db          (both in one figure)

Writes into ``--out`` (default ``results/<study>/report/``, ``results/compare/`` for several):

    pareto.html / .png   validation accuracy vs parameters: the Pareto front (fewest parameters for
                         the accuracy), the budget line, test accuracy of retrained trials
    macs.html / .png     validation accuracy vs multiply-accumulates per image
    curves.html / .png   learning curves of the top trials
    budget.html / .png   how much of the budget the candidates used
    trials.csv           one row per trial, genotype fields as columns

The HTML files embed plotly.js and open offline; the PNGs need a Chromium-family browser (kaleido
finds Debian's ``chromium`` on its own, or the one ``BROWSER_PATH`` names). The top trials are
printed. Unless told otherwise, each study also gets its Pareto figure and a note for
optuna-dashboard, and its trained trials their learning-curve and torchinfo artifacts (only the
missing ones: running the report again replaces and adds, never duplicates).

Exit 0 on success, 1 when the disk is full (one line), 2 on bad input (one line on stderr,
nothing created).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import plotly.graph_objects as go

import search
from search import provenance
from search.artifacts import find_artifact_dir, upload_trial_artifacts
from search.figures import (
    TEST_FIELDS,
    StudyView,
    accuracy_figure,
    budget_figure,
    budget_text,
    curves_figure,
    pareto_front,
)
from search.stages import story
from search.stages.recipe import is_recipe_study
from search.storage import StorageSpec, open_existing_storage
from search.study import is_rejected
from space import Genotype, format_count
from space._cli import ArgumentParser
from space._io import check_writable_folder, disk_full_message, write_text_atomic
from space.errors import UserError

GRAPH_OBJECT_ID = "budget-nas-pareto"  # fixed, so that saving it again replaces it
# Pixel sizes of the PNGs (drawn at twice this for sharp text).
PNG_SIZES = {
    "pareto": (1100, 650),
    "macs": (1100, 650),
    "curves": (1100, 600),
    "budget": (1100, 460),
}


# -- tables -----------------------------------------------------------------------------------

_TRIAL_COLUMNS = (
    "params",
    "macs",
    "budget_share",
    "epochs_run",
    "train_seconds",
    "images_per_s",
    "status",
    "duplicate_of",
    "reference",
    "device",
    "key",
)


def _whole_genotype(recorded: dict[str, Any]) -> dict[str, Any]:
    """Every field of a recorded genotype, those at their defaults too (a genotype's dict leaves
    them out), so that a column of trials.csv is never blank for a default value."""
    try:
        return dataclasses.asdict(Genotype.from_dict(recorded))
    except UserError:  # a record this version cannot read: shown as it is
        return recorded


def flatten_genotype(genotype: dict[str, Any]) -> dict[str, Any]:
    """One column per genotype field: ``stem_width``, ``stage1_depth``, ``augment_flip``..."""
    row: dict[str, Any] = {}
    for name, value in genotype.items():
        if name == "stages":
            row["num_stages"] = len(value)
            for i, stage in enumerate(value, start=1):
                for field, v in stage.items():
                    row[f"stage{i}_{field}"] = v
        elif name == "augment":
            for field, v in value.items():
                row[f"augment_{field}"] = v
        else:
            row[name] = value
    return row


def trials_frame(views: Sequence[StudyView]) -> pd.DataFrame:
    """One row per trial of every study: state, value, the search's numbers and the genotype."""
    rows = []
    for view in views:
        for t in view.trials:
            row: dict[str, Any] = {
                "study": view.name,
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "rejected": is_rejected(t),
            }
            test = view.test_result(t) or {}
            values = {name: t.user_attrs.get(name) for name in _TRIAL_COLUMNS}
            values.update({name: test.get(name) for name in TEST_FIELDS})
            for name, value in values.items():
                row[name] = json.dumps(value) if isinstance(value, (list, dict)) else value
            row["params_over_budget"] = t.constraints.get("params_over_budget")
            row["macs_over_budget"] = t.constraints.get("macs_over_budget")
            row["datetime_start"] = t.datetime_start
            row["datetime_complete"] = t.datetime_complete
            row.update(flatten_genotype(_whole_genotype(t.user_attrs.get("genotype") or {})))
            rows.append(row)
    return pd.DataFrame(rows)


def top_frame(view: StudyView, *, top: int) -> pd.DataFrame:
    """The ``top`` feasible complete trials, for the terminal."""
    rows = []
    for rank, t in enumerate(view.ranked()[:top], start=1):
        a = t.user_attrs
        test = view.test_result(t) or {}
        rows.append(
            {
                "rank": rank,
                "trial": t.number,
                "val acc": f"{t.value:.4f}",
                "test acc": _fraction(test.get("test_acc"), ".4f"),
                "test TTA": _fraction(test.get("test_acc_tta"), ".4f"),
                "params": format_count(a["params"]),
                "budget": f"{a['params'] / view.budget:.1%}",
                "MACs": format_count(a["macs"]) if "macs" in a else "",
                "epochs": a.get("epochs_run", ""),
                "min": f"{a.get('train_seconds', 0) / 60:.1f}",
                "genotype": a.get("key", ""),
            }
        )
    frame = pd.DataFrame(rows)
    empty = [c for c in ("test acc", "test TTA") if c in frame and not frame[c].any()]
    return frame.drop(columns=empty)


def _fraction(value: object, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else ""


# -- the dashboard ---------------------------------------------------------------------------


def note_markdown(
    view: StudyView,
    *,
    report_dir: Path | None = None,
    written_by: str = "python -m search.report",
) -> str:
    """A short summary of the run for the study's note in optuna-dashboard. It holds no time, so
    saving it again after no change is recognised and skipped."""
    c = view.counts()
    lines = [
        f"## {view.name}",
        "",
        f"- **budget** {view.budget:,} parameters"
        + (f"; **data** {view.dataset}" if view.dataset else "")
        + (
            f"; trials of up to {view.max_epochs} epochs, Hyperband pruning"
            if view.max_epochs
            else ""
        ),
        f"- **trials** {c['total']}: {c['complete']} complete, {c['pruned']} pruned, "
        f"{c['rejected']} rejected over budget, {c['failed']} failed"
        + (f", {c['running']} running" if c["running"] else "")
        + (f"; {c['diverged']} of the pruned diverged" if c["diverged"] else ""),
    ]
    ranked = view.ranked()
    if not ranked:
        lines.append(f"- **no complete trial within the budget yet**{_why_none(c)}")
    if ranked:
        b = ranked[0]
        test = _fraction((view.test_result(b) or {}).get("test_acc"), ".2%")
        lines.append(
            f"- **best** trial {b.number}: validation accuracy {b.value:.2%}"
            + (f", test accuracy {test} after retraining" if test else "")
            + f", {b.user_attrs['params']:,} parameters "
            f"({b.user_attrs['params'] / view.budget:.1%} of the budget)"
        )
        lines.append(f"  `{b.user_attrs.get('key', '')}`")
    points = [(t.user_attrs["params"], t.value) for t in ranked]
    front = [ranked[i] for i in pareto_front(points)]  # type: ignore[arg-type]
    tests = [_fraction((view.test_result(t) or {}).get("test_acc"), ".2%") for t in front]
    header = ["trial", "val acc", *(["test acc"] if any(tests) else []), "params", "budget", "MACs"]
    lines += [
        "",
        f"### Pareto front: {len(front)} trials",
        "",
        "No other complete trial is as accurate with fewer parameters.",
        "",
        "| " + " | ".join(header) + " | key |",
        "|" + " ---: |" * len(header) + " --- |",
    ]
    for t, test in zip(front, tests, strict=True):
        a = t.user_attrs
        cells = [
            str(t.number),
            f"{t.value:.2%}",
            *([test] if any(tests) else []),
            format_count(a["params"]),
            f"{a['params'] / view.budget:.0%}",
            format_count(a["macs"]) if "macs" in a else "",
        ]
        lines.append("| " + " | ".join(cells) + f" | `{a.get('key', '')}` |")
    told = story(view.trials, view.stages, view.budget)
    if told:
        lines += ["", "### How the search chose", "", "```", *told, "```"]
    lines += [
        "",
        "The Pareto figure is on the study's main page; each trained trial has its learning curve "
        "and network summary under Artifacts.",
    ]
    if report_dir is not None:
        lines.append(f"All plots and `trials.csv`: `{provenance.portable_path(report_dir)}`.")
    lines.append(f"Written by `{written_by}` (budget-nas {search.__version__}).")
    return "\n".join(lines) + "\n"


def _why_none(counts: dict[str, int]) -> str:
    """Why a study has no result yet, when its trials say so: all diverged, say."""
    trained = counts["total"] - counts["rejected"] - counts["running"]
    if counts["diverged"] and counts["diverged"] == trained:
        return (
            f": every trained trial diverged ({counts['diverged']}: the training loss became "
            "nan or inf); a lower learning rate (--lr) or a look at the data may help"
        )
    if counts["diverged"]:
        return f": {counts['diverged']} trial(s) diverged (the training loss became nan or inf)"
    return ""


def publish(study: optuna.Study, figure: go.Figure, note: str) -> None:
    """Put the Pareto figure and the note into the study, replacing the previous ones."""
    from optuna_dashboard import get_note, save_note, save_plotly_graph_object

    # Saving writes every chunk again (a journal file grows by each): save only a change.
    if saved_figure_json(study) != figure.to_json():
        save_plotly_graph_object(study, figure, graph_object_id=GRAPH_OBJECT_ID)
    if get_note(study) != note:  # each save also makes a new note version
        save_note(study, note)


def saved_figure_json(study: optuna.Study) -> str | None:
    """The Pareto figure saved in the study, as JSON (optuna-dashboard keeps it in chunks of
    study system attrs ``dashboard:plot_data:<id>:<i>``)."""
    prefix = f"dashboard:plot_data:{GRAPH_OBJECT_ID}:"
    attrs = study._storage.get_study_system_attrs(study._study_id)
    chunks = {int(k[len(prefix) :]): v for k, v in attrs.items() if k.startswith(prefix)}
    return "".join(chunks[i] for i in sorted(chunks)) if chunks else None


def load_studies(
    storages: Sequence[str], names: Sequence[str]
) -> list[tuple[optuna.Study, StorageSpec]]:
    """The studies named on the command line, each with its storage: one name per storage,
    several names in one storage, or no name for a storage that holds a single study."""
    if names and len(storages) > 1 and len(names) != len(storages):
        raise UserError(
            f"give one --study-name per --storage, or one --storage for all names, but got "
            f"{len(storages)} --storage and {len(names)} --study-name"
        )
    opened = [open_existing_storage(url) for url in storages]
    if not names:
        pairs = [(spec, storage, None) for spec, storage in opened]
    elif len(opened) == 1:
        pairs = [(opened[0][0], opened[0][1], name) for name in names]
    else:
        pairs = [(spec, storage, name) for (spec, storage), name in zip(opened, names, strict=True)]
    studies = []
    for spec, storage, name in pairs:
        present = optuna.study.get_all_study_names(storage)
        if name is None:
            # A search's recipe stage keeps a study of its own beside it: not a search to report.
            searches = [n for n in present if not is_recipe_study(n)]
            present = searches if len(searches) == 1 else present
            if len(present) != 1:
                raise UserError(
                    f"--storage {spec.url!r} holds "
                    + (
                        f"{len(present)} studies ({', '.join(present)}): pick one with --study-name"
                        if present
                        else "no study"
                    )
                )
            name = present[0]
        elif name not in present:
            raise UserError(
                f"--study-name {name!r}: no such study in {spec.url!r} (studies there: "
                f"{', '.join(present) or 'none'})"
            )
        studies.append((optuna.load_study(study_name=name, storage=storage), spec))
    return studies


# -- files -----------------------------------------------------------------------------------


def write_html(figures: dict[str, go.Figure], out: Path) -> list[Path]:
    paths = []
    for name, fig in figures.items():
        path = out / f"{name}.html"
        html = fig.to_html(include_plotlyjs=True, full_html=True, config={"displaylogo": False})
        write_text_atomic(path, html)
        paths.append(path)
    return paths


def write_png(figures: dict[str, go.Figure], out: Path) -> tuple[list[Path], str | None]:
    """PNGs through kaleido, with one browser for all figures. Returns the files and, when no
    browser could be found or it failed, a one-line reason instead of raising."""
    names = list(figures)
    tmp = Path(tempfile.mkdtemp(prefix=".png-", dir=out))  # same folder: renames are atomic
    try:
        # plotly's write_images drops kaleido's per-figure errors (a render that timed out on a
        # busy machine, say): a figure whose file did not appear is rendered once more.
        for _attempt in range(2):
            missing = [n for n in names if not (tmp / f"{n}.png").exists()]
            if not missing:
                break
            reason = _render_png({n: figures[n] for n in missing}, tmp)
            if reason is not None:
                return [], reason
        missing = [n for n in names if not (tmp / f"{n}.png").exists()]
        paths = []
        for n in names:
            if n not in missing:
                os.replace(tmp / f"{n}.png", out / f"{n}.png")
                paths.append(out / f"{n}.png")
        if missing:
            return paths, (
                f"no PNG of {', '.join(missing)}: kaleido rendered no image twice; the HTML "
                "files are written"
            )
        return paths, None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _render_png(figures: dict[str, go.Figure], folder: Path) -> str | None:
    """Render into ``folder``; None, or why no browser could render at all."""
    import plotly.io as pio

    try:
        from kaleido.errors import ChromeNotFoundError
    except ImportError:  # a machine without kaleido (a bare GPU box, say)
        return "no PNG: kaleido is not installed (pip install kaleido); the HTML files are written"
    try:
        pio.write_images(
            list(figures.values()),
            [folder / f"{n}.png" for n in figures],
            format="png",
            width=[PNG_SIZES.get(n, (1100, 650))[0] for n in figures],
            height=[_png_height(n, f) for n, f in figures.items()],
            scale=2,
        )
    except Exception as exc:  # the PNGs are a convenience: the HTML files hold the figures
        # plotly turns kaleido's ChromeNotFoundError into a RuntimeError
        if isinstance(exc, ChromeNotFoundError) or isinstance(exc.__context__, ChromeNotFoundError):
            return (
                "no PNG: kaleido found no Chrome or Chromium (apt-get install chromium, or "
                "set BROWSER_PATH); the HTML files are written"
            )
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return f"no PNG: kaleido failed ({type(exc).__name__}: {first}); the HTML files are written"
    return None


def _png_height(name: str, fig: go.Figure) -> int:
    height = PNG_SIZES.get(name, (1100, 650))[1]
    rows = len(fig.layout.annotations or []) if name == "budget" else 0
    return height if rows <= 1 else 160 + 300 * rows


# -- the command ------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m search.report",
        description=(
            "Plots (Pareto front, accuracy vs MACs, learning curves, budget use) and tables of "
            "one or several studies; pushes the Pareto figure, a note and per-trial artifacts "
            "into each study for optuna-dashboard."
        ),
    )
    p.add_argument(
        "--storage",
        action="append",
        required=True,
        help="sqlite:///FILE.db, journal:///FILE.journal or postgresql+psycopg://...; repeat "
        "it to overlay several studies",
    )
    p.add_argument(
        "--study-name",
        action="append",
        default=[],
        help="the study (default: the storage's only one); repeat it, one per --storage or "
        "several in one storage",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="output folder (default <results>/<study>/report, or <results>/compare)",
    )
    p.add_argument("--top", type=int, default=10, help="trials in the table and the curves")
    p.add_argument(
        "--results",
        type=Path,
        help="results folder: default report folder and the studies' artifacts (default: "
        "where the search put them)",
    )
    p.add_argument(
        "--no-dashboard",
        action="store_true",
        help="leave the studies unchanged: no figure, note or artifacts for optuna-dashboard",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except Exception as exc:  # a full disk: one line; anything else is a bug of ours
        full = disk_full_message(exc, "the report folder")
        if full is None:
            raise
        print(f"error: {full}; free some space and run the command again", file=sys.stderr)
        return 1


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.top < 1:
        parser.error(f"--top must be an integer >= 1, but got {args.top}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        loaded = load_studies(args.storage, args.study_name)
        studies = [study for study, _ in loaded]
        artifacts = [find_artifact_dir(study, spec.path, args.results) for study, spec in loaded]
        views = [StudyView.of(s) for s in studies]
        for view in views:
            if not view.ranked():
                c = view.counts()
                raise UserError(
                    f"study {view.name!r} has no complete trial within its budget yet "
                    f"({c['total']} trials: {c['pruned']} pruned, {c['rejected']} rejected, "
                    f"{c['failed']} failed, {c['running']} running){_why_none(c)}; nothing "
                    "to report"
                )
        # <results>/<study>/artifacts -> <results>/<study>/report, or <results>/compare
        out = args.out or (
            artifacts[0].parent / "report"
            if len(views) == 1
            else artifacts[0].parents[1] / "compare"
        )
        check_writable_folder(out)
        if not args.no_dashboard:
            for folder in artifacts:
                check_writable_folder(folder)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    figures = {
        "pareto": accuracy_figure(views, measure="params"),
        "macs": accuracy_figure(views, measure="macs"),
        "curves": curves_figure(views, top=args.top),
        "budget": budget_figure(views),
    }
    out.mkdir(parents=True, exist_ok=True)
    table = trials_frame(views)
    write_text_atomic(out / "trials.csv", table.to_csv(index=False))
    written = write_html(figures, out)
    pngs, no_png = write_png(figures, out)
    for view in views:
        _print_top(view, top=args.top)
    print(
        f"\nwrote {out}/: "
        + ", ".join(p.name for p in [*written, *pngs])
        + f", trials.csv ({len(table)} trials)"
    )
    if no_png:
        print(no_png)
    if not args.no_dashboard:
        for study, view, folder in zip(studies, views, artifacts, strict=True):
            _update_dashboard(study, view, artifacts=folder, report_dir=out)
    return 0


def _print_top(view: StudyView, *, top: int) -> None:
    c = view.counts()
    print(
        f"\nstudy {view.name}: {c['total']} trials ({c['complete']} complete, {c['pruned']} "
        f"pruned, {c['rejected']} rejected over budget, {c['failed']} failed); "
        f"{budget_text(view)}"
    )
    print(f"top {top} (complete trials within the budget, by validation accuracy):")
    print(top_frame(view, top=top).to_string(index=False))
    for line in story(view.trials, view.stages, view.budget):
        print(line)


def _update_dashboard(
    study: optuna.Study, view: StudyView, *, artifacts: Path, report_dir: Path
) -> None:
    publish(
        study, accuracy_figure([view], measure="params"), note_markdown(view, report_dir=report_dir)
    )
    dataset = study.user_attrs.get("dataset") or {}
    uploaded = 0
    if "num_classes" in dataset and "image_size" in dataset:
        system_attrs = study._storage.get_study_system_attrs(study._study_id)
        for t in view.trials:
            uploaded += bool(
                upload_trial_artifacts(
                    study,
                    t,
                    artifact_dir=artifacts,
                    num_classes=dataset["num_classes"],
                    image_size=dataset["image_size"],
                    in_channels=dataset.get("in_channels", 3),
                    study_system_attrs=system_attrs,
                )
            )
    print(
        f"dashboard: Pareto figure and note saved in study {view.name}; artifacts uploaded for "
        f"{uploaded} trial(s) to {artifacts}"
    )


if __name__ == "__main__":
    sys.exit(main())
