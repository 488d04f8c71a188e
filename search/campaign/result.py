"""The result of a campaign: the leaderboard of every model trained, the Pareto figure, and a
README that says who won at each budget, by how much, and how that compares with the noise.

``write_result`` reads what the campaign's stages left on disk (the per-budget plan
``models.json``, each run folder's ``metrics.json``, the studies) and writes
``results/reference/<name>/``. It trains nothing, so it runs after every stage, after an
interruption, and for ``--summarize``.

Honesty rules, enforced here rather than left to the reader:

- the searched network in the headline is the one the search chose (the race's winner, else the
  best validation accuracy),
  never the one that did best on the test split; the reference it meets is the best reference on
  the test split, which favours the references;
- the noise is the standard deviation over seeds pooled over every model of the budget (all
  trained with the same seeds), and a margin within twice it is called a tie;
- a budget whose planned models or seeds are not all finished gets no verdict, only "partial";
- rows of runs made with other settings (other epochs, say) are left out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sqlite3
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from search import provenance
from search.campaign.log import Log
from search.campaign.preset import BudgetPlan, Campaign
from search.config import DataConfig
from search.storage import open_existing_storage, parse_storage
from search.study import SearchConfig
from search.training import TrainConfig
from space import format_count
from space._io import write_json_atomic, write_text_atomic
from space.errors import UserError

MAX_DATABASE_BYTES = 4 * 2**20  # a study database is copied into the result up to this size
# The preset as run, in the work folder (written when a session starts) and in the result: a
# preset edited after the run does not change what the result says it ran.
AS_RUN_PRESET = "campaign.toml"
LEADERBOARD_COLUMNS = [
    "budget",
    "source",
    "name",
    "recipe",
    "trial",
    "chosen",
    "params",
    "fits_budget",
    "macs",
    "val_acc",
    "race_val_acc",
    "test_acc_mean",
    "test_acc_std",
    "test_acc_tta_mean",
    "test_acc_tta_std",
    "seeds",
    "seeds_planned",
    "epochs",
    "train_images",
    "test_images",
    "tta_views",
    "device",
    "minutes",
    "key",
]
_RECIPE_ORDER = {"own": 0, "standard": 1, "searched": 2}


def load_study_if_any(url: str, name: str) -> optuna.Study | None:
    """The study, or None when its file or the study does not exist (yet)."""
    spec = parse_storage(url)
    if spec.path is not None and not spec.path.is_file():
        return None
    try:
        _, storage = open_existing_storage(url)
        return optuna.load_study(study_name=name, storage=storage)
    except (UserError, KeyError):
        return None


def planned_models(campaign: Campaign, b: BudgetPlan) -> list[dict[str, Any]]:
    """What the campaign set out to train at budget ``b`` (its ``models.json``); none before
    the search ended."""
    try:
        models = json.loads((campaign.study_dir(b) / "models.json").read_text())
    except (OSError, ValueError):
        return []
    return models if isinstance(models, list) else []


def collect_rows(campaign: Campaign) -> pd.DataFrame:
    """One row per model with at least one finished seed, from the run folders themselves, so
    that a campaign cut in the middle of a model still shows the seeds it finished. A seed run
    with other epochs than planned (an edited preset) is left out."""
    rows = []
    for b in campaign.budgets:
        epochs = campaign.retrain_epochs(b)
        for m in planned_models(campaign, b):
            runs = []
            folder = campaign.study_dir(b) / "retrain" / m["name"]
            for path in sorted(folder.glob("seed-*/metrics.json")):
                try:
                    metrics = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if metrics.get("seed") in campaign.seeds and metrics.get("epochs") == epochs:
                    runs.append(metrics)
            if runs:
                rows.append(_row(campaign, b, m, runs))
    frame = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)
    frame["trial"] = frame["trial"].astype("Int64")
    if not frame.empty:
        frame = frame.assign(_r=frame["recipe"].map(_RECIPE_ORDER)).sort_values(
            ["budget", "_r", "test_acc_mean"], ascending=[True, True, False]
        )
        frame = frame.drop(columns="_r").reset_index(drop=True)
    return frame


def _row(
    campaign: Campaign, b: BudgetPlan, model: Mapping[str, Any], metrics: list[dict[str, Any]]
) -> dict[str, Any]:
    def mean(key: str) -> float:
        return statistics.fmean(m[key] for m in metrics)

    def spread(key: str) -> float:
        return statistics.stdev(m[key] for m in metrics) if len(metrics) > 1 else 0.0

    first = metrics[0]
    trial = int(model["base"].split("-", 1)[1]) if model["base"].startswith("trial-") else None
    max_macs = campaign.max_macs(b)
    return {
        "budget": b.budget,
        "source": model["source"],
        "name": model["name"],
        "recipe": model["recipe"],
        "trial": trial,
        "chosen": bool(model.get("chosen", False)),
        "params": first["params"],
        "fits_budget": first["params"] <= b.budget
        and (max_macs is None or first["macs"] <= max_macs),
        "macs": first["macs"],
        "val_acc": model.get("val_acc"),
        "race_val_acc": model.get("race_val_acc"),
        "test_acc_mean": mean("test_acc"),
        "test_acc_std": spread("test_acc"),
        "test_acc_tta_mean": mean("test_acc_tta"),
        "test_acc_tta_std": spread("test_acc_tta"),
        "seeds": len(metrics),
        "seeds_planned": campaign.retrain.seeds,
        "epochs": first["epochs"],
        "train_images": first.get("train_images"),
        "test_images": first.get("test_images"),
        "tta_views": first["tta_views"],
        "device": first["device"],
        "minutes": sum(m["train_minutes"] for m in metrics),
        "key": first["key"],
    }


def keep_preset(campaign: Campaign) -> None:
    """Keep the preset as this session runs it in the work folder, for the result."""
    write_text_atomic(campaign.work / AS_RUN_PRESET, campaign.preset.read_text())


def write_result(campaign: Campaign, log: Log | None) -> pd.DataFrame:
    """Write ``results/reference/<name>/`` from whatever the campaign has finished."""
    from search.figures import StudyView

    out = campaign.out
    out.mkdir(parents=True, exist_ok=True)
    rows = collect_rows(campaign)
    write_text_atomic(out / "leaderboard.csv", rows.to_csv(index=False))
    # The preset as the campaign ran it; the file itself only for a work folder from before
    # the campaign kept a copy.
    as_run = campaign.work / AS_RUN_PRESET
    shutil.copyfile(as_run if as_run.is_file() else campaign.preset, out / AS_RUN_PRESET)

    studies = {
        b.study: load_study_if_any(campaign.storage_url(b), b.study) for b in campaign.budgets
    }
    views = [StudyView.of(s) for s in studies.values() if s is not None]
    views = [v for v in views if v.ranked()]
    copied = [c.name for b in campaign.budgets if (c := _copy_database(campaign, b, out))]
    (out / "pareto.png").unlink(missing_ok=True)  # never a figure of an earlier state
    no_png = _write_figures(campaign, rows, views, out) if views else None
    planned = {b.budget: planned_models(campaign, b) for b in campaign.budgets}
    sessions = log.sessions if log else []
    record = {
        "campaign": campaign.name,
        "preset": provenance.portable_path(campaign.preset),
        "command": _command(campaign, log),
        # What the campaign ran on and with, not what rewrites its result (--summarize).
        "machines": sorted({s.get("machine", "") for s in sessions} - {""})
        or [provenance.machine(campaign.config.device)],
        "versions": _versions(sessions, studies),
        "written": provenance.now(),
        "wall_seconds": log.seconds() if log else None,
        "sessions": sessions,
        "databases": copied,
        # What each budget set out to train: how rewrite_result tells a partial result.
        "planned": {
            format_count(budget): [m["name"] for m in models] for budget, models in planned.items()
        },
    }
    write_json_atomic(out / "campaign.json", record)
    notes_path = out / "NOTES.md"
    notes = notes_path.read_text() if notes_path.is_file() else ""
    text = readme(campaign, rows, record, log, planned=planned, studies=studies, notes=notes)
    write_text_atomic(out / "README.md", text)
    if no_png:
        print(no_png)
    return rows


def rewrite_result(out: Path) -> pd.DataFrame:
    """Rewrite a result's ``README.md`` and ``pareto.png`` from the result's own files: its
    ``leaderboard.csv``, ``campaign.json``, preset as run (``campaign.toml``), study databases
    and ``NOTES.md``. For a result whose work folder is not on this machine (a GPU run's, say),
    after a hand-written ``NOTES.md`` was added or where the run could not render the PNG.
    The leaderboard, the record, the databases and ``pareto.html`` (written when missing) are
    left as they are; nothing is trained."""
    from search.campaign.preset import load_campaign
    from search.figures import StudyView

    try:
        record = json.loads((out / "campaign.json").read_text())
        rows = pd.read_csv(out / "leaderboard.csv")
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{out}: not a campaign result (expected campaign.json and leaderboard.csv): {exc}"
        ) from None
    rows["trial"] = rows["trial"].astype("Int64")
    name = record["campaign"]
    with tempfile.TemporaryDirectory() as tmp:  # the preset's file name names the campaign
        preset = Path(tmp) / f"{name}.toml"
        shutil.copyfile(out / AS_RUN_PRESET, preset)
        campaign = load_campaign(preset, data=None, device=None, results=Path("results"), out=out)
    campaign = dataclasses.replace(campaign, preset=Path(record["preset"]))
    studies = {
        b.study: load_study_if_any(f"sqlite:///{out / b.study}.db", b.study)
        for b in campaign.budgets
    }
    views = [v for s in studies.values() if s is not None and (v := StudyView.of(s)).ranked()]
    names = record.get("planned") or {}
    planned = {
        b.budget: [
            {"name": n}
            for n in names.get(format_count(b.budget), rows[rows["budget"] == b.budget]["name"])
        ]
        for b in campaign.budgets
    }
    (out / "pareto.png").unlink(missing_ok=True)
    no_png = _write_figures(campaign, rows, views, out, html=not (out / "pareto.html").is_file())
    log = Log(out / "log.json", list(record.get("sessions", [])))  # read, never written
    notes_path = out / "NOTES.md"
    notes = notes_path.read_text() if notes_path.is_file() else ""
    text = readme(campaign, rows, record, log, planned=planned, studies=studies, notes=notes)
    write_text_atomic(out / "README.md", text)
    if no_png:
        print(no_png)
    return rows


def _write_figures(
    campaign: Campaign, rows: pd.DataFrame, views: Sequence[Any], out: Path, *, html: bool = True
) -> str | None:
    """``pareto.html`` and ``.png``: the search's trials, the references at their test accuracy.
    Returns why no PNG was written, or None."""
    from search.figures import ReferencePoint, accuracy_figure
    from search.report import write_png

    if not views:
        return None
    study_of = {b.budget: b.study for b in campaign.budgets}
    references = [
        ReferencePoint(
            study=study_of[r.budget],
            name=r.name,
            params=int(r.params),
            macs=int(r.macs),
            test_acc=float(r.test_acc_mean),
            test_acc_std=float(r.test_acc_std),
            seeds=int(r.seeds),
        )
        for r in rows.itertuples()
        if r.source == "reference" and r.recipe == "own"
    ]
    figure = accuracy_figure(views, measure="params", references=references)
    figure.update_layout(title={"text": _figure_title(campaign, views)})
    if html:
        # plotly.js from its CDN: a committed file of 50 kB instead of 4.8 MB.
        write_text_atomic(
            out / "pareto.html", figure.to_html(include_plotlyjs="cdn", full_html=True)
        )
    _, no_png = write_png({"pareto": figure}, out)
    return no_png


def _versions(
    sessions: Sequence[Mapping[str, Any]], studies: Mapping[str, optuna.Study | None]
) -> dict[str, str]:
    """The versions the campaign ran with: its last session's; for a log from before sessions
    recorded them, those its first study recorded; this process's only when neither exists."""
    for session in reversed(sessions):
        if isinstance(session.get("versions"), dict):
            return session["versions"]
    for study in studies.values():
        if study is not None and isinstance(study.user_attrs.get("versions"), dict):
            return study.user_attrs["versions"]
    return provenance.versions()


def _command(campaign: Campaign, log: Log | None) -> str:
    """The command as the last session typed it (flags included), else the plain one."""
    if log is not None and log.sessions:
        words = log.sessions[-1]["command"].split()
        if "search.campaign" in words:
            rest = [w for w in words[words.index("search.campaign") + 1 :] if w != "--summarize"]
            return provenance.portable_command(" ".join(["python -m search.campaign", *rest]))
    return f"python -m search.campaign --config {provenance.portable_path(campaign.preset)}"


def _figure_title(campaign: Campaign, views: Sequence[Any]) -> str:
    budgets = ", ".join(format_count(v.budget) for v in views)
    return (
        f"campaign {campaign.name}: searched networks and references ({budgets})<br><sup>dots: "
        "validation accuracy in the search; stars: searched networks retrained, diamonds: "
        "references, both test accuracy (mean over seeds)</sup>"
    )


def _copy_database(campaign: Campaign, b: BudgetPlan, out: Path) -> Path | None:
    """A consistent copy of the study's database into the result, when it is small."""
    spec = parse_storage(campaign.storage_url(b))
    assert spec.path is not None
    if not spec.path.is_file() or spec.path.stat().st_size > MAX_DATABASE_BYTES:
        return None
    target = out / spec.path.name
    if spec.kind == "journal":
        shutil.copyfile(spec.path, target)
        return target
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    source = sqlite3.connect(f"file:{spec.path.resolve()}?mode=ro", uri=True)
    copy = sqlite3.connect(tmp)
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()
    # The committed copy names no folder of this machine: its data source, artifact folder,
    # command and report note relative to the project root.
    provenance.portable_database(tmp)
    tmp.replace(target)
    return target


# -- the verdict -------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _acc(mean: float, std: float, seeds: int) -> str:
    return f"{100 * mean:.2f}% ± {100 * std:.2f}" if seeds > 1 else f"{100 * mean:.2f}%"


def pooled_spread(rows: pd.DataFrame) -> tuple[float, int]:
    """(standard deviation over seeds pooled over ``rows``' models, degrees of freedom): every
    model of a budget trains with the same seeds, so their spreads estimate one noise."""
    several = rows[rows["seeds"] > 1]
    dof = int((several["seeds"] - 1).sum())
    if dof == 0:
        return 0.0, 0
    variance = float(((several["seeds"] - 1) * several["test_acc_std"] ** 2).sum()) / dof
    return math.sqrt(variance), dof


def verdict(rows: pd.DataFrame, budget: int, planned: Sequence[Mapping[str, Any]] = ()) -> str:
    """One paragraph: did search win at ``budget``, by how much, against the seed spread; and
    with swapped recipes, how much of it the architecture and the recipe each explain.
    ``planned`` (the budget's ``models.json``) tells a finished budget from a partial one."""
    at = rows[rows["budget"] == budget]
    own = at[at["recipe"] == "own"]
    searched, refs = own[own["source"] == "search"], own[own["source"] == "reference"]
    label = format_count(budget)
    if searched.empty or refs.empty:
        return f"At {label}: not finished yet (searched and reference models both needed)."
    missing = [m["name"] for m in planned if m["name"] not in set(at["name"])]
    short = at[at["seeds"] < at["seeds_planned"]]["name"].tolist()
    partial = bool(missing or short)
    chosen = searched[searched["chosen"]] if "chosen" in searched else searched.iloc[0:0]
    s = chosen.iloc[0] if not chosen.empty else searched.sort_values("val_acc").iloc[-1]
    r = refs.sort_values("test_acc_mean", ascending=False).iloc[0]
    margin = s.test_acc_mean - r.test_acc_mean
    noise, dof = pooled_spread(at)
    if partial:
        head = (
            f"**Partial result at {label}** ({len(missing)} planned model(s) not trained yet"
            + (f", {len(short)} with fewer seeds than planned" if short else "")
            + "): no verdict."
        )
    elif dof == 0:
        ahead = "ahead" if margin > 0 else "behind"
        head = f"**Search {ahead} at {label} (one seed: no verdict).**"
    elif abs(margin) > 2 * noise:
        head = f"**Search {'won' if margin > 0 else 'lost'} at {label}.**"
    else:
        head = f"**No clear winner at {label}.**"
    if dof:
        noise_text = (
            f"{abs(margin) / noise:.1f} times the seed spread of {100 * noise:.2f} points"
            if noise > 0
            else "against a seed spread of zero"
        )
        noise_text += (
            f" (the standard deviation over seeds, pooled over the budget's {len(at)} models: "
            f"{dof} degrees of freedom; a margin within twice it is called a tie)"
        )
    else:
        noise_text = "with no seed spread to weigh it against"
    text = (
        f"{head} The network the search chose ("
        + (
            "the race's winner on validation"
            if pd.notna(s.get("race_val_acc", float("nan")))
            else "best validation accuracy"
        )
        + f"), {s['name']} "
        f"({format_count(s.params)} parameters, {format_count(s.macs)} MACs), reached "
        f"{_acc(s.test_acc_mean, s.test_acc_std, int(s.seeds))} test accuracy against "
        f"{_acc(r.test_acc_mean, r.test_acc_std, int(r.seeds))} for {r['name']} "
        f"({format_count(r.params)}, {format_count(r.macs)} MACs), the best reference on the test "
        f"split: {100 * margin:+.2f} points, {noise_text}. With test-time augmentation: "
        f"{_pct(s.test_acc_tta_mean)} against {_pct(r.test_acc_tta_mean)}."
    )
    standard = at[(at["recipe"] == "standard") & (at["source"] == "search")]
    standard = standard[standard["name"] == f"{s['name']}+standard"]
    swapped = at[at["recipe"] == "searched"]
    if not standard.empty:
        a = standard.iloc[0]
        arch = a.test_acc_mean - r.test_acc_mean
        text += (
            f" **Architecture or recipe?** {s['name']}'s architecture with the references' "
            f"standard recipe (crop 4, flip, label smoothing 0.1) reached "
            f"{_acc(a.test_acc_mean, a.test_acc_std, int(a.seeds))}: {100 * arch:+.2f} points "
            f"against {r['name']} with that same recipe (the architecture's share), and "
            f"{100 * (s.test_acc_mean - a.test_acc_mean):+.2f} points from its own searched recipe "
            "(the recipe's share)."
        )
    elif swapped.empty:
        text += (
            " The searched network also brings its own augmentation while the references train "
            "with the standard one, so this margin mixes architecture and recipe "
            "(`swap_recipes = true` separates them)."
        )
    parts = []
    for x in swapped.itertuples():
        base = own[own["name"] == x.name.split("+")[0]]
        if not base.empty:
            delta = x.test_acc_mean - base.iloc[0].test_acc_mean
            parts.append(f"{x.name.split('+')[0]} {100 * delta:+.2f}")
    if parts:
        text += (
            " The searched recipe on the references, against their own: "
            + ", ".join(parts)
            + " points."
        )
    return text


# -- the README --------------------------------------------------------------------------------


def readme(
    campaign: Campaign,
    rows: pd.DataFrame,
    record: Mapping[str, Any],
    log: Log | None,
    *,
    planned: Mapping[int, Sequence[Mapping[str, Any]]],
    studies: Mapping[str, optuna.Study | None],
    notes: str,
) -> str:
    c = campaign
    lines = [f"# Campaign {c.name}", ""]
    if c.config.description:
        lines += [c.config.description.strip(), ""]
    for b in c.budgets:
        lines += [verdict(rows, b.budget, planned.get(b.budget, ())), ""]
    for b in c.budgets:
        study = studies.get(b.study)
        if study is not None:
            lines += search_story(study, b.budget)
    lines += ["## Leaderboard", "", *_table(rows), ""]
    lines += _what_the_numbers_are(c, rows, studies)
    if (c.out / "pareto.png").exists():
        lines += [
            "",
            "![validation accuracy of the search's trials, test accuracy of the retrained "
            "models](pareto.png)",
            "",
            "Dots: validation accuracy of every trial in the search (faded: pruned). Stars: the "
            "searched networks retrained, diamonds: the references, both at their test accuracy "
            "(mean over seeds). `pareto.html` is the interactive version.",
        ]
    lines += ["", "## Reproduce", ""]
    if "cifar10-jpeg" in str(c.data["source"]):
        lines.append("    mkdir -p data && tar xzf ../shared/data/cifar10-jpeg.tar.gz -C data")
    lines += [
        f"    {record['command']}",
        "",
        "The preset as run is `campaign.toml`. Working files (trained models, per-study reports) "
        f"are in `{provenance.portable_path(c.work)}/`. Running the command again continues "
        "where it stopped; `--summarize` rewrites this folder from what exists.",
        "",
        "## Machine, versions, time",
        "",
        f"- machine: {'; '.join(record['machines'])}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()),
    ]
    if log is not None and log.sessions:
        total = log.seconds() / 60
        stages = ", ".join(
            f"{stage} {log.seconds(stage) / 60:.1f}" for stage in ("search", "retrain", "report")
        )
        killed = log.cut_short()
        cut = f", {killed} of them killed mid-stage, counted to its last record" if killed else ""
        lines.append(
            f"- wall time: {total:.1f} min ({stages} min) in {len(log.sessions)} session(s){cut}, "
            f"first started {log.sessions[0]['started']}"
        )
    if record.get("databases"):
        lines.append(
            "- study database(s): "
            + ", ".join(f"`{name}`" for name in record["databases"])
            + " (open with optuna-dashboard or `optuna.load_study`)"
        )
    lines.append(f"- written {record['written']} by `python -m search.campaign`")
    if notes.strip():
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def search_story(study: optuna.Study, budget: int) -> list[str]:
    """How the search chose at ``budget``, from its study: where the references ranked among
    the trials, the race of the leaders, the recipe stage (markdown lines; none for a study
    made before these stages)."""
    from search.stages import story

    told = story(study.get_trials(deepcopy=False), study.user_attrs, budget)
    if not told:
        return []
    return [f"**How the search chose at {format_count(budget)}.**", "", "```", *told, "```", ""]


def _table(rows: pd.DataFrame) -> list[str]:
    if rows.empty:
        return ["No model has finished retraining yet."]
    # The race's column where a race ran (a result made before the race has none).
    raced = "race_val_acc" in rows and bool(rows["race_val_acc"].notna().any())
    head = (
        "| budget | model | source | recipe | params | MACs | val acc (search) | "
        + ("val acc (race) | " if raced else "")
        + "test acc | test acc, TTA | seeds | epochs | train images | minutes |"
    )
    lines = [head, "|" + " ---: |" * 2 + " --- |" * 2 + " ---: |" * (10 if raced else 9)]
    for r in rows.itertuples():
        seeds = f"{r.seeds}" + (f" of {r.seeds_planned}" if r.seeds < r.seeds_planned else "")
        name = f"**{r.name}**" if r.chosen else r.name
        race = getattr(r, "race_val_acc", None)
        lines.append(
            f"| {format_count(r.budget)} | {name} | {r.source} | {r.recipe} | "
            f"{r.params:,} | {format_count(r.macs)}{'' if r.fits_budget else ' (over)'} | "
            f"{'' if pd.isna(r.val_acc) else _pct(r.val_acc)} | "
            + (f"{'' if pd.isna(race) else _pct(race)} | " if raced else "")
            + f"{_acc(r.test_acc_mean, r.test_acc_std, r.seeds)} | "
            f"{_acc(r.test_acc_tta_mean, r.test_acc_tta_std, r.seeds)} | {seeds} | {r.epochs} | "
            f"{r.train_images:,} | {r.minutes:.1f} |"
        )
    lines += [
        "",
        "In bold: the network the search chose"
        + (" (best in the race of the leaders)" if raced else " (best validation accuracy)")
        + ". `(over)`: over the parameter or MACs budget.",
    ]
    return lines


def _what_the_numbers_are(
    c: Campaign, rows: pd.DataFrame, studies: Mapping[str, optuna.Study | None]
) -> list[str]:
    from search.figures import StudyView

    data = DataConfig(**c.data)
    train = TrainConfig(**c.train)
    images = (
        f"{c.retrain.subset} images per class of the training split"
        if c.retrain.subset
        else "the whole training split"
    )
    recorded = next(
        (s.user_attrs.get("settings", {}).get("data", {}) for s in studies.values() if s), {}
    )
    val_size = recorded.get("val_size", data.val_size)
    lines = [
        "**What the numbers are.** Test accuracy on the whole test split"
        + (f" ({int(rows['test_images'].iloc[0]):,} images)" if not rows.empty else "")
        + ", measured once, after the last epoch (no epoch is chosen on the test split); mean ± "
        "standard deviation over the seeds, the same seeds for every model. TTA: the mean "
        "logits of flipped and shifted views. Every model of a budget trained with the same "
        "recipe, epochs, data and seeds; `recipe` says whose augmentation it used (`own`: the "
        "one it came with, `searched`: the chosen searched network's, `standard`: crop 4, flip, "
        "label smoothing 0.1). `val acc (search)` is the validation accuracy a network had in "
        "its short trial in the search (with the search's recipe: the standard one unless the "
        "search was joint), `val acc (race)` its mean over the race's seeds at the race's "
        "longer setting, where it raced.",
        "",
        f"**The search** ran on `{provenance.portable_path(data.source)}`"
        + (f", {data.subset} training images per class" if data.subset else "")
        + f", trials of up to {train.epochs} epochs (batch {train.batch_size}, lr {train.lr}), "
        + (
            f"ranked on {val_size:,} validation images carved from the training split"
            if isinstance(val_size, int)
            else "ranked on a validation split carved from the training split"
        )
        + ", Hyperband pruning. **The retraining** used "
        + images
        + f" with the validation images merged back, {c.retrain.seeds} seeds per model.",
        "",
    ]
    for b in c.budgets:
        search = c.search_tables(b)["search"]
        study = studies.get(b.study)
        counts, done = "", 0
        if study is not None:
            k = StudyView.of(study).counts()
            done = k["total"]
            counts = (
                f" ({k['complete']} complete, {k['pruned']} pruned, {k['rejected']} rejected "
                f"over budget, {k['failed']} failed)"
            )
        max_macs = c.max_macs(b)
        lines.append(
            f"- {format_count(b.budget)}: {done} trials{counts} of at most "
            f"{search.get('trials', SearchConfig.trials)}"
            + (f" or {search['timeout']:g} s" if search.get("timeout") else "")
            + f", space `{search.get('space', 'default')}`"
            + (f", at most {format_count(max_macs)} MACs per image" if max_macs else "")
            + f"; the top {c.top(b)} retrained for {c.retrain_epochs(b)} epochs beside "
            + ", ".join(p.stem for p in b.references)
            + "."
        )
    return lines


__all__ = [
    "LEADERBOARD_COLUMNS",
    "collect_rows",
    "keep_preset",
    "load_study_if_any",
    "planned_models",
    "pooled_spread",
    "rewrite_result",
    "verdict",
    "write_result",
]
