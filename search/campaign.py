"""Prove it: search under a budget, retrain the winners beside hand-designed networks of the same
budget under the identical recipe, and write the comparison.

    python -m search.campaign --config configs/campaign/cpu-400k.toml

A campaign preset (``configs/campaign/*.toml``) names the budgets, the data, the search, how many
of the best distinct searched trials to retrain, the seeds, the retraining recipe, and for every
budget the reference architectures that train beside the winners with the same recipe, epochs,
data and seeds. For each budget in turn the campaign runs the three existing commands, as a user
would type them (each is printed first, so any step can be rerun by hand):

1. ``python -m search.run --config <work>/search-<budget>.toml`` (a preset it writes);
2. ``python -m search.retrain ... --top N --seeds S --arch <reference> ...``;
3. ``python -m search.report ...``.

Working files (studies, trained models, reports) go to ``results/campaigns/<name>/``; the result
to keep and commit goes to ``results/reference/<name>/``: ``leaderboard.csv``, ``pareto.png`` and
``.html`` (the winners as stars, the references as diamonds), ``README.md`` (the table, the
verdict against the seed spread, the command, the machine, the versions and the wall time), the
preset as run, and each study database when it is small. The result is rewritten after every
stage, also when a stage is interrupted, so a campaign cut short leaves a readable partial
leaderboard. Running the same command again continues where it stopped: finished trials, models
and epochs are kept. ``--summarize`` only rewrites the result from what exists.

With ``swap_recipes = true`` every reference also trains with the best searched trial's
augmentation, and the best searched architecture with the standard CIFAR recipe (crop 4, flip,
label smoothing 0.1): rows with ``recipe`` ``searched`` and ``standard`` beside ``own``, which
tell the architecture's share of a margin from the recipe's.

Exit 0 when every stage finished, 1 when one failed, 2 on bad input (one line on stderr, nothing
written), 130 when interrupted (run the same command again to continue).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import signal
import sqlite3
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
import pandas as pd

from search import provenance
from search.config import DataConfig, from_mapping
from search.storage import open_existing_storage, parse_storage
from search.study import SearchConfig, budget_label
from search.training import TrainConfig
from space import Augment, Genotype, format_count, parse_budget
from space._cli import ArgumentParser
from space._io import check_writable_folder, write_json_atomic, write_text_atomic
from space._toml import dumps_toml, load_toml
from space.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
REFERENCES = ROOT / "configs" / "reference"
# The recipe every reference file carries (configs/reference/*.toml): pad-4 crop, flip and label
# smoothing 0.1; a searched architecture is also trained with it when recipes are swapped.
STANDARD_RECIPE = Augment(crop_padding=4, flip=True, label_smoothing=0.1)
# [search] keys the campaign sets itself, per budget.
OWNED_SEARCH_KEYS = ("budget", "study_name", "storage", "results", "device")
MAX_DATABASE_BYTES = 4 * 2**20  # a study database is copied into the result up to this size
LEADERBOARD_COLUMNS = [
    "budget",
    "source",
    "name",
    "recipe",
    "trial",
    "params",
    "fits_budget",
    "macs",
    "val_acc",
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


# -- the preset -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignConfig:
    """``[campaign]``: what the campaign is and where it runs."""

    name: str | None = None  # names the result folder; default the preset's file name
    description: str = ""  # one paragraph for the result's README
    device: str = "auto"  # auto, cpu, cuda, cuda:N: every stage runs there
    storage: Literal["sqlite", "journal"] = "sqlite"  # journal for [search] workers > 1
    swap_recipes: bool = False  # also train each side with the other side's augmentation


@dataclass(frozen=True)
class RetrainConfig:
    """``[retrain]`` keys besides the training recipe (any ``TrainConfig`` key may appear too)."""

    top: int = 2  # best distinct searched genotypes retrained per budget
    seeds: int = 2  # seeds per model, the same seeds for every model
    subset: int | None = None  # training images per class (training and validation merged)
    export: bool = True  # TorchScript/ONNX beside every model (seconds each; off saves time)

    def __post_init__(self) -> None:
        for name in ("top", "seeds"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be an integer >= 1, but got {getattr(self, name)}")
        if self.subset is not None and self.subset < 1:
            raise UserError(f"subset must be an integer >= 1, but got {self.subset}")


@dataclass(frozen=True)
class BudgetPlan:
    """One ``[[budgets]]`` entry: a budget, its study and the references that compete at it."""

    budget: int
    label: str  # 400k
    study: str  # the study's name
    references: tuple[Path, ...]
    search: Mapping[str, Any]  # the [search] table for this budget (overrides applied)
    top: int | None = None  # winners retrained at this budget ([retrain] top if None)
    retrain_epochs: int | None = None  # retraining epochs at this budget ([retrain] if None)


@dataclass(frozen=True)
class Campaign:
    """A campaign preset, read and checked."""

    name: str
    preset: Path
    config: CampaignConfig
    budgets: tuple[BudgetPlan, ...]
    data: Mapping[str, Any]  # [data], the search's (DataConfig keys)
    train: Mapping[str, Any]  # [train], the search trials' recipe (TrainConfig keys)
    retrain: RetrainConfig
    retrain_train: Mapping[str, Any]  # the retraining recipe's TrainConfig keys
    work: Path  # results/campaigns/<name>
    out: Path  # results/reference/<name>

    @property
    def seeds(self) -> range:
        """The seeds every model trains with (``search.retrain``: the first seed and on)."""
        first = self.retrain_train.get("seed", TrainConfig.seed)
        return range(first, first + self.retrain.seeds)

    def top(self, b: BudgetPlan) -> int:
        return b.top if b.top is not None else self.retrain.top

    def retrain_recipe(self, b: BudgetPlan) -> dict[str, Any]:
        """The retraining recipe's TrainConfig keys at budget ``b``."""
        recipe = dict(self.retrain_train)
        if b.retrain_epochs is not None:
            recipe["epochs"] = b.retrain_epochs
        return recipe

    def storage_url(self, b: BudgetPlan) -> str:
        suffix = "journal" if self.config.storage == "journal" else "db"
        prefix = "journal" if self.config.storage == "journal" else "sqlite"
        return f"{prefix}:///{self.work / b.study}.{suffix}"

    def search_tables(self, b: BudgetPlan) -> dict[str, dict[str, Any]]:
        """The preset ``search.run`` gets for budget ``b``."""
        search = {
            **b.search,
            "budget": b.label,
            "study_name": b.study,
            "results": str(self.work),
            "device": self.config.device,
            "storage": self.storage_url(b),
        }
        return {"search": search, "data": dict(self.data), "train": dict(self.train)}

    def study_dir(self, b: BudgetPlan) -> Path:
        return self.work / b.study


# A [[budgets]] entry: the budget, its references, and what may differ from one budget to the
# next (never between the two sides of one budget): the space, the search's length, and how
# many winners retrain for how many epochs.
_BUDGET_KEYS = (
    "budget",
    "references",
    "space",
    "trials",
    "timeout",
    "max_macs",
    "top",
    "retrain_epochs",
)


def load_campaign(
    path: Path, *, data: str | None, device: str | None, results: Path, out: Path | None
) -> Campaign:
    """Read and check a campaign preset; nothing is created."""
    raw = load_toml(path)
    tables = ("campaign", "budgets", "search", "data", "train", "retrain")
    for key in raw:
        if key not in tables:
            raise UserError(
                f"{path}: unknown table or key {key!r}; allowed: "
                + ", ".join(f"[{t}]" if t != "budgets" else "[[budgets]]" for t in tables)
            )
    for key in ("campaign", "search", "data", "train", "retrain"):
        if not isinstance(raw.get(key, {}), Mapping):
            raise UserError(f"{path}: {key!r} must be a table [{key}], but got {raw[key]!r}")
    config = from_mapping(CampaignConfig, raw.get("campaign", {}), where=f"{path} [campaign]")
    if device is not None:
        config = dataclasses.replace(config, device=device)
    name = config.name or path.stem
    if not _is_name(name):
        raise UserError(
            f"{path} [campaign] name must be letters, digits, '.', '_' or '-' (it names "
            f"folders), but got {name!r}"
        )

    search = dict(raw.get("search", {}))
    owned = [k for k in OWNED_SEARCH_KEYS if k in search]
    if owned:
        raise UserError(
            f"{path} [search]: {', '.join(owned)} are set by the campaign (budget per "
            "[[budgets]] entry, device in [campaign]); remove them"
        )
    from_mapping(SearchConfig, search, where=f"{path} [search]")
    data_table = dict(raw.get("data", {}))
    if data is not None:
        data_table["source"] = data
    if "source" not in data_table:
        raise UserError(f"{path} [data] has no source: name the data (or pass --data)")
    from_mapping(DataConfig, data_table, where=f"{path} [data]")
    train = dict(raw.get("train", {}))
    from_mapping(TrainConfig, train, where=f"{path} [train]")

    retrain_raw = dict(raw.get("retrain", {}))
    own_keys = [f.name for f in dataclasses.fields(RetrainConfig)]
    train_keys = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in retrain_raw:
        if key not in own_keys and key not in train_keys:
            raise UserError(
                f"unknown key {key!r} in {path} [retrain]; allowed keys: "
                f"{', '.join(own_keys + train_keys)}"
            )
    retrain = from_mapping(
        RetrainConfig,
        {k: v for k, v in retrain_raw.items() if k in own_keys},
        where=f"{path} [retrain]",
    )
    retrain_train = {k: v for k, v in retrain_raw.items() if k in train_keys}
    from_mapping(TrainConfig, retrain_train, where=f"{path} [retrain]")

    entries = raw.get("budgets")
    if not isinstance(entries, list) or not entries:
        raise UserError(
            f"{path}: no [[budgets]] entries; give at least one, e.g. [[budgets]] budget = "
            '"400k", references = ["resnet20"]'
        )
    budgets = []
    for i, entry in enumerate(entries):
        where = f"{path} [[budgets]] #{i + 1}"
        budgets.append(_budget_plan(entry, where=where, name=name, search=search))
    labels = [b.label for b in budgets]
    if len(set(labels)) != len(labels):
        raise UserError(f"{path}: a budget appears twice in [[budgets]] ({', '.join(labels)})")
    return Campaign(
        name=name,
        preset=path,
        config=config,
        budgets=tuple(budgets),
        data=data_table,
        train=train,
        retrain=retrain,
        retrain_train=retrain_train,
        work=results / "campaigns" / name,
        out=out or results / "reference" / name,
    )


def _budget_plan(entry: Any, *, where: str, name: str, search: Mapping[str, Any]) -> BudgetPlan:
    if not isinstance(entry, Mapping):
        raise UserError(f"{where} must be a table, but got {entry!r}")
    for key in entry:
        if key not in _BUDGET_KEYS:
            raise UserError(f"unknown key {key!r} in {where}; allowed: {', '.join(_BUDGET_KEYS)}")
    if "budget" not in entry:
        raise UserError(f"{where} has no budget (400k, 5M, ...)")
    budget = parse_budget(entry["budget"])
    label = budget_label(budget)
    references = entry.get("references", [])
    if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
        raise UserError(
            f"{where}: references must be a list of names in configs/reference/ or TOML paths, "
            f"but got {references!r}"
        )
    paths = tuple(reference_path(r) for r in references)
    for p in paths:
        Genotype.load(p)  # a broken file is refused now, not after the search
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise UserError(f"{where}: a reference appears twice ({', '.join(stems)})")
    overrides = {k: entry[k] for k in ("space", "trials", "timeout", "max_macs") if k in entry}
    table = {**search, **overrides}
    from_mapping(SearchConfig, table, where=where)
    # The study is named after the campaign, and the budget unless the name already says it.
    study = name if label in name.lower().split("-") else f"{name}-{label}"
    top, epochs = entry.get("top"), entry.get("retrain_epochs")
    for key, value in (("top", top), ("retrain_epochs", epochs)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise UserError(f"{where}: {key} must be an integer >= 1, but got {value!r}")
    return BudgetPlan(budget, label, study, paths, table, top, epochs)


def reference_path(text: str) -> Path:
    """A reference by name (``resnet20`` for configs/reference/resnet20.toml) or path."""
    if text.endswith(".toml"):
        path = Path(text)
    else:
        path = REFERENCES / f"{text}.toml"
        if not path.exists():
            names = sorted(p.stem for p in REFERENCES.glob("*.toml"))
            raise UserError(
                f"reference {text!r}: no such file in configs/reference/ (there: "
                f"{', '.join(names)}; or give a path to a .toml file)"
            )
    if not path.is_file():
        raise UserError(f"reference {text!r}: no such file {path}")
    return path


def _is_name(text: str) -> bool:
    return bool(text) and all(c.isalnum() or c in "._-" for c in text) and text[0] not in ".-"


# -- the stages -------------------------------------------------------------------------------


@dataclass
class Log:
    """Wall time of every session and stage of a campaign, kept in ``<work>/log.json`` so that a
    campaign run in several sessions reports its whole time."""

    path: Path
    sessions: list[dict[str, Any]]

    @classmethod
    def open(cls, path: Path) -> Log:
        try:
            sessions = json.loads(path.read_text())["sessions"]
        except (OSError, ValueError, KeyError, TypeError):
            sessions = []
        return cls(path, sessions)

    def start(self) -> None:
        self.sessions.append(
            {
                "started": provenance.now(),
                "host": provenance.host(),
                "command": provenance.command_line(),
                "seconds": 0.0,
                "stages": [],
            }
        )
        self._t0 = time.time()
        self.save()

    def stage(
        self, stage: str, budget: str, seconds: float, code: int, settings: str | None = None
    ) -> None:
        session = self.sessions[-1]
        session["stages"].append(
            {
                "stage": stage,
                "budget": budget,
                "seconds": round(seconds, 1),
                "exit": code,
                **({"settings": settings} if settings else {}),
            }
        )
        session["seconds"] = round(time.time() - self._t0, 1)
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, {"sessions": self.sessions})

    def finished(self, stage: str, budget: str, settings: str) -> bool:
        """Whether an earlier session ran ``stage`` of ``budget`` to the end with ``settings``."""
        return any(
            (x["stage"], x["budget"], x["exit"], x.get("settings")) == (stage, budget, 0, settings)
            for s in self.sessions
            for x in s["stages"]
        )

    def seconds(self, stage: str | None = None) -> float:
        if stage is None:
            return sum(s["seconds"] for s in self.sessions)
        return sum(x["seconds"] for s in self.sessions for x in s["stages"] if x["stage"] == stage)


def _stage(
    log: Log,
    stage: str,
    budget: str,
    module: str,
    argv: list[str],
    entry: Callable[[list[str]], int],
    settings: str | None = None,
) -> int:
    """Run one command in this process, as typed, and log its wall time and exit code."""
    print(f"\n$ python -m {module} {' '.join(argv)}", flush=True)
    started = time.time()
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        code = entry(argv)
    except KeyboardInterrupt:
        code = 130
    except SystemExit as exc:  # argparse in a command: a bug of ours, reported as such
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        # search.run installs its own Ctrl-C handling; the next stage gets the campaign's back.
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    log.stage(stage, budget, time.time() - started, code, settings)
    return code


def run_budget(campaign: Campaign, b: BudgetPlan, log: Log, *, progress: bool) -> int:
    """Search, retrain and report one budget; the first exit code that is not 0."""
    from search import report, retrain
    from search import run as search_run

    quiet = [] if progress else ["--no-progress"]
    tables = campaign.search_tables(b)
    # A search that ended (trials done, or its timeout) is not run again: a timeout-bound one
    # would search on. Where the data lives does not count; what it holds the study checks.
    digest = hashlib.sha256(
        dumps_toml(
            {**tables, "data": {k: v for k, v in tables["data"].items() if k != "source"}}
        ).encode()
    ).hexdigest()[:16]
    if log.finished("search", b.label, digest):
        print(f"\nsearch at {b.label}: finished in an earlier session with these settings")
    else:
        preset = campaign.work / f"search-{b.label}.toml"
        write_text_atomic(
            preset,
            f"# Written by python -m search.campaign from {campaign.preset}: the search of "
            f"budget {b.label}.\n" + dumps_toml(tables),
        )
        argv = ["--config", str(preset), *quiet]
        code = _stage(log, "search", b.label, "search.run", argv, search_run.main, digest)
        if code != 0:
            return code

    url = campaign.storage_url(b)
    models = plan_models(campaign, b)
    write_json_atomic(campaign.study_dir(b) / "models.json", models)
    extra = [m["arch"] for m in models if m["arch"] is not None]
    retrain_preset = campaign.work / f"retrain-{b.label}.toml"
    write_text_atomic(
        retrain_preset,
        f"# Written by python -m search.campaign from {campaign.preset}: the retraining recipe "
        "(the study's batch size and learning rate unless set here).\n"
        + dumps_toml({"train": campaign.retrain_recipe(b)}),
    )
    argv = [
        "--storage",
        url,
        "--study-name",
        b.study,
        "--top",
        str(campaign.top(b)),
        "--seeds",
        str(campaign.retrain.seeds),
        "--config",
        str(retrain_preset),
        "--data",
        str(campaign.data["source"]),
        "--device",
        campaign.config.device,
        "--out",
        str(campaign.study_dir(b)),
        *(["--subset", str(campaign.retrain.subset)] if campaign.retrain.subset else []),
        *[a for path in extra for a in ("--arch", path)],
        *([] if campaign.retrain.export else ["--no-export"]),
        *quiet,
    ]
    code = _stage(log, "retrain", b.label, "search.retrain", argv, retrain.main)
    if code != 0:
        return code
    return _stage(
        log,
        "report",
        b.label,
        "search.report",
        ["--storage", url, "--study-name", b.study],
        report.main,
    )


def plan_models(campaign: Campaign, b: BudgetPlan) -> list[dict[str, Any]]:
    """What retrains at budget ``b``: the best searched trials (as ``search.retrain`` picks
    them), the references, and with ``swap_recipes`` each side with the other's augmentation
    (architecture files written under ``<study>/recipes/``). ``arch`` is the file passed to
    ``--arch``, None for searched trials."""
    from search.retrain import select_trials

    study = _load_study(campaign.storage_url(b), b.study)
    winners = select_trials(study, b.budget, campaign.top(b))
    models = [
        {"name": c.name, "source": "search", "recipe": "own", "base": c.name, "arch": None}
        for c in winners
    ]
    models += [
        {"name": p.stem, "source": "reference", "recipe": "own", "base": p.stem, "arch": str(p)}
        for p in b.references
    ]
    if campaign.config.swap_recipes and winners:
        best = winners[0]
        folder = campaign.study_dir(b) / "recipes"
        for p in b.references:
            name = f"{p.stem}+searched"
            path = folder / f"{name}.toml"
            Genotype.load(p).replace(augment=best.genotype.augment).save(
                path, header=f"{p.stem} with the augmentation of {best.name} ({b.study})"
            )
            models.append(
                {
                    "name": name,
                    "source": "reference",
                    "recipe": "searched",
                    "base": p.stem,
                    "arch": str(path),
                }
            )
        name = f"{best.name}+standard"
        path = folder / f"{name}.toml"
        best.genotype.replace(augment=STANDARD_RECIPE).save(
            path, header=f"{best.name} of {b.study} with the standard CIFAR recipe"
        )
        models.append(
            {
                "name": name,
                "source": "search",
                "recipe": "standard",
                "base": best.name,
                "arch": str(path),
            }
        )
    return models


def _load_study(url: str, name: str) -> optuna.Study:
    _, storage = open_existing_storage(url)
    return optuna.load_study(study_name=name, storage=storage)


# -- the result -------------------------------------------------------------------------------


def collect_rows(campaign: Campaign) -> pd.DataFrame:
    """One row per model with at least one finished seed, from the run folders themselves, so
    that a campaign cut in the middle of a model still shows the seeds it finished."""
    rows = []
    for b in campaign.budgets:
        folder = campaign.study_dir(b)
        try:
            models = json.loads((folder / "models.json").read_text())
        except (OSError, ValueError):
            continue
        val = _validation_accuracies(campaign, b)
        for m in models:
            runs = []
            for metrics_path in sorted(
                (folder / "retrain" / m["name"]).glob("seed-*/metrics.json")
            ):
                try:
                    metrics = json.loads(metrics_path.read_text())
                except (OSError, ValueError):
                    continue
                if metrics.get("seed") in campaign.seeds:
                    runs.append(metrics)
            if runs:
                rows.append(_row(campaign, b, m, runs, val))
    frame = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)
    frame["trial"] = frame["trial"].astype("Int64")
    order = {"own": 0, "standard": 1, "searched": 2}
    if not frame.empty:
        frame = frame.assign(_r=frame["recipe"].map(order)).sort_values(
            ["budget", "_r", "test_acc_mean"], ascending=[True, True, False]
        )
        frame = frame.drop(columns="_r").reset_index(drop=True)
    return frame


def _row(
    campaign: Campaign,
    b: BudgetPlan,
    model: Mapping[str, Any],
    metrics: list[dict[str, Any]],
    val: Mapping[int, float],
) -> dict[str, Any]:
    def mean(key: str) -> float:
        return statistics.fmean(m[key] for m in metrics)

    def spread(key: str) -> float:
        return statistics.stdev(m[key] for m in metrics) if len(metrics) > 1 else 0.0

    first = metrics[0]
    trial = None
    if model["base"].startswith("trial-"):
        trial = int(model["base"].split("-", 1)[1])
    return {
        "budget": b.budget,
        "source": model["source"],
        "name": model["name"],
        "recipe": model["recipe"],
        "trial": trial,
        "params": first["params"],
        "fits_budget": first["params"] <= b.budget,
        "macs": first["macs"],
        "val_acc": val.get(trial) if trial is not None else None,
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


def _validation_accuracies(campaign: Campaign, b: BudgetPlan) -> dict[int, float]:
    study = _try_study(campaign, b)
    if study is None:
        return {}
    return {t.number: t.value for t in study.get_trials(deepcopy=False) if t.value is not None}


def _try_study(campaign: Campaign, b: BudgetPlan) -> optuna.Study | None:
    spec = parse_storage(campaign.storage_url(b))
    if spec.path is None or not spec.path.is_file():
        return None
    try:
        return _load_study(spec.url, b.study)
    except (UserError, KeyError):
        return None


def write_result(campaign: Campaign, log: Log | None) -> pd.DataFrame:
    """Write ``results/reference/<name>/`` from whatever the campaign has finished."""
    from search.figures import ReferencePoint, StudyView, accuracy_figure
    from search.report import write_png

    out = campaign.out
    out.mkdir(parents=True, exist_ok=True)
    rows = collect_rows(campaign)
    write_text_atomic(out / "leaderboard.csv", rows.to_csv(index=False))
    shutil.copyfile(campaign.preset, out / "campaign.toml")

    views, copied = [], []
    for b in campaign.budgets:
        study = _try_study(campaign, b)
        if study is None:
            continue
        view = StudyView.of(study)
        if view.ranked():
            views.append(view)
        copy = _copy_database(campaign, b, out)
        if copy is not None:
            copied.append(copy.name)
    png = None
    if views:
        references = [
            ReferencePoint(
                study=next(b.study for b in campaign.budgets if b.budget == r.budget),
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
        # plotly.js from its CDN: a committed file of 50 kB instead of 4.8 MB.
        html = figure.to_html(include_plotlyjs="cdn", full_html=True)
        write_text_atomic(out / "pareto.html", html)
        pngs, png = write_png({"pareto": figure}, out)
        if pngs:
            png = None
    machine = provenance.machine(campaign.config.device)
    record = {
        "campaign": campaign.name,
        "preset": str(campaign.preset),
        "command": f"python -m search.campaign --config {campaign.preset}",
        "machine": machine,
        "versions": provenance.versions(),
        "written": provenance.now(),
        "wall_seconds": log.seconds() if log else None,
        "sessions": log.sessions if log else [],
        "databases": copied,
    }
    write_json_atomic(out / "campaign.json", record)
    notes_path = out / "NOTES.md"
    notes = notes_path.read_text() if notes_path.is_file() else ""
    write_text_atomic(out / "README.md", readme(campaign, rows, record, log, notes=notes))
    if png:
        print(png)
    return rows


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
    tmp.replace(target)
    return target


# -- the README of a result --------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _acc(mean: float, std: float, seeds: int) -> str:
    return f"{100 * mean:.2f}% ± {100 * std:.2f}" if seeds > 1 else f"{100 * mean:.2f}%"


def verdict(rows: pd.DataFrame, budget: int) -> str:
    """One paragraph: did search win at ``budget``, by how much, against the seed spread; and
    with swapped recipes, how much of it the architecture and the recipe each explain."""
    at = rows[rows["budget"] == budget]
    own = at[at["recipe"] == "own"]
    searched, refs = own[own["source"] == "search"], own[own["source"] == "reference"]
    label = format_count(budget)
    if searched.empty or refs.empty:
        return f"At {label}: not finished yet (searched and reference models both needed)."
    s = searched.sort_values("test_acc_mean", ascending=False).iloc[0]
    r = refs.sort_values("test_acc_mean", ascending=False).iloc[0]
    margin = s.test_acc_mean - r.test_acc_mean
    noise = max(s.test_acc_std, r.test_acc_std)
    seeds = int(min(s.seeds, r.seeds))
    if seeds < 2:
        judged = "with one seed the noise is unmeasured, so this is no verdict"
        outcome = "ahead" if margin > 0 else "behind"
    elif abs(margin) > 2 * noise:
        outcome = "won" if margin > 0 else "lost"
        judged = (
            f"{abs(margin) / noise:.1f} times the larger seed spread"
            if noise > 0
            else "against a seed spread of zero"
        )
    else:
        outcome = "tied"
        judged = f"within twice the larger seed spread ({100 * noise:.2f} points)"
    head = {
        "won": f"**Search won at {label}.**",
        "lost": f"**Search lost at {label}.**",
        "tied": f"**No clear winner at {label}.**",
        "ahead": f"**Search ahead at {label} (one seed).**",
        "behind": f"**Search behind at {label} (one seed).**",
    }[outcome]
    text = (
        f"{head} The best searched network, {s['name']} ({format_count(s.params)} parameters), "
        f"reached {_acc(s.test_acc_mean, s.test_acc_std, int(s.seeds))} test accuracy against "
        f"{_acc(r.test_acc_mean, r.test_acc_std, int(r.seeds))} for {r['name']} "
        f"({format_count(r.params)}), the best reference: {100 * margin:+.2f} points, {judged} "
        f"(mean ± standard deviation over {seeds} seeds; with so few seeds the spread itself is "
        f"a rough estimate). With test-time augmentation: "
        f"{_pct(s.test_acc_tta_mean)} against {_pct(r.test_acc_tta_mean)}."
    )
    standard = at[(at["recipe"] == "standard") & (at["source"] == "search")]
    if not standard.empty:
        a = standard.iloc[0]
        arch = a.test_acc_mean - r.test_acc_mean
        text += (
            f" **Architecture or recipe?** {s['name']}'s architecture with the references' "
            f"standard recipe (crop 4, flip, label smoothing 0.1) reached "
            f"{_acc(a.test_acc_mean, a.test_acc_std, int(a.seeds))}: {100 * arch:+.2f} points "
            f"against {r['name']} with the same recipe (the architecture's share), and "
            f"{100 * (s.test_acc_mean - a.test_acc_mean):+.2f} points from its own searched recipe "
            "(the recipe's share)."
        )
    swapped = at[at["recipe"] == "searched"]
    if not swapped.empty:
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


def readme(
    campaign: Campaign,
    rows: pd.DataFrame,
    record: Mapping[str, Any],
    log: Log | None,
    *,
    notes: str,
) -> str:
    c = campaign
    lines = [f"# Campaign {c.name}", ""]
    if c.config.description:
        lines += [c.config.description.strip(), ""]
    for b in c.budgets:
        lines += [verdict(rows, b.budget), ""]
    lines += ["## Leaderboard", "", *_table(rows), ""]
    lines += _what_the_numbers_are(c, rows)
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
        f"The preset as run is `campaign.toml`. Working files (trained models, per-study reports) "
        f"are in `{c.work}/`. Running the command again continues where it stopped; "
        f"`--summarize` rewrites this folder from what exists.",
        "",
        "## Machine, versions, time",
        "",
        f"- machine: {record['machine']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()),
    ]
    if log is not None and log.sessions:
        total = log.seconds() / 60
        stages = ", ".join(
            f"{stage} {log.seconds(stage) / 60:.1f}" for stage in ("search", "retrain", "report")
        )
        lines.append(
            f"- wall time: {total:.1f} min ({stages} min) in {len(log.sessions)} session(s), "
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


def _table(rows: pd.DataFrame) -> list[str]:
    if rows.empty:
        return ["No model has finished retraining yet."]
    head = (
        "| budget | model | source | recipe | params | MACs | val acc (search) | test acc | "
        "test acc, TTA | seeds | epochs | train images | minutes |"
    )
    lines = [head, "|" + " ---: |" * 2 + " --- |" * 2 + " ---: |" * 9]
    for r in rows.itertuples():
        seeds = f"{r.seeds}" + (f" of {r.seeds_planned}" if r.seeds < r.seeds_planned else "")
        lines.append(
            f"| {format_count(r.budget)} | {r.name} | {r.source} | {r.recipe} | "
            f"{r.params:,}{'' if r.fits_budget else ' (over)'} | {format_count(r.macs)} | "
            f"{'' if pd.isna(r.val_acc) else _pct(r.val_acc)} | "
            f"{_acc(r.test_acc_mean, r.test_acc_std, r.seeds)} | "
            f"{_acc(r.test_acc_tta_mean, r.test_acc_tta_std, r.seeds)} | {seeds} | {r.epochs} | "
            f"{r.train_images:,} | {r.minutes:.1f} |"
        )
    return lines


def _what_the_numbers_are(c: Campaign, rows: pd.DataFrame) -> list[str]:
    data = DataConfig(**c.data)
    train = TrainConfig(**c.train)
    images = (
        f"{c.retrain.subset} images per class of the training split"
        if c.retrain.subset
        else "the whole training split"
    )
    lines = [
        "**What the numbers are.** Test accuracy on the whole test split"
        + (f" ({int(rows['test_images'].iloc[0]):,} images)" if not rows.empty else "")
        + ", measured once, after the last epoch (no epoch is chosen on the test split); mean ± "
        "standard deviation over the seeds, the same seeds for every model. TTA: the mean "
        "logits of flipped and shifted views. Every model of a budget trained with the same "
        "recipe, epochs, data and seeds; `recipe` says whose augmentation it used (`own`: the "
        "one it came with, `searched`: the best searched trial's, `standard`: crop 4, flip, "
        "label smoothing 0.1). `val acc` is the validation accuracy the searched trial had in "
        "its short search run.",
        "",
        f"**The search** ran on `{data.source}`"
        + (f", {data.subset} training images per class" if data.subset else "")
        + f", trials of up to {train.epochs} epochs (batch {train.batch_size}, lr {train.lr}), "
        f"ranked on {data.val_size:,} validation images carved from the training split, Hyperband "
        "pruning. **The retraining** used "
        + images
        + f" with the validation images merged back, {c.retrain.seeds} seeds per model.",
        "",
    ]
    for b in c.budgets:
        search = c.search_tables(b)["search"]
        study = _try_study(c, b)
        counts = ""
        if study is not None:
            from search.figures import StudyView

            k = StudyView.of(study).counts()
            counts = (
                f" ({k['complete']} complete, {k['pruned']} pruned, {k['rejected']} rejected "
                f"over budget, {k['failed']} failed)"
            )
        done = len(study.trials) if study is not None else 0
        lines.append(
            f"- {format_count(b.budget)}: {done} trials{counts} of at most "
            f"{search.get('trials', SearchConfig.trials)}"
            + (f" or {search['timeout']:g} s" if search.get("timeout") else "")
            + f", space `{search.get('space', 'default')}`"
            + (
                f", at most {format_count(parse_budget(search['max_macs']))} MACs per image"
                if search.get("max_macs") is not None
                else ""
            )
            + f"; the top {c.top(b)} retrained for "
            f"{c.retrain_recipe(b).get('epochs', 200)} epochs beside "
            + ", ".join(p.stem for p in b.references)
            + "."
        )
    return lines


# -- the command ------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m search.campaign",
        description="Search under each budget of a campaign preset, retrain the winners beside "
        "the reference networks under the same recipe, and write the comparison to "
        "results/reference/<name>/. Running it again continues where it stopped.",
    )
    p.add_argument("--config", type=Path, required=True, help="campaign preset (TOML)")
    p.add_argument("--data", help="override [data] source (the same images at another path)")
    p.add_argument("--device", help="override [campaign] device: auto, cpu, cuda, cuda:N")
    p.add_argument("--results", type=Path, default=Path("results"), help="default results")
    p.add_argument("--out", type=Path, help="result folder (default results/reference/<name>)")
    p.add_argument(
        "--summarize",
        action="store_true",
        help="train nothing: rewrite the result from what exists",
    )
    p.add_argument("--no-progress", action="store_true", help="log lines only, no bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        campaign = load_campaign(
            args.config, data=args.data, device=args.device, results=args.results, out=args.out
        )
        check_plans(campaign)
        check_writable_folder(campaign.work)
        check_writable_folder(campaign.out)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.summarize:
        write_result(campaign, Log.open(campaign.work / "log.json"))
        print(f"wrote {campaign.out}/")
        return 0

    fresh = not campaign.work.exists()
    campaign.work.mkdir(parents=True, exist_ok=True)
    log = Log.open(campaign.work / "log.json")
    log.start()
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's stop, like Ctrl-C
    code = 0
    try:
        for b in campaign.budgets:
            code = run_budget(campaign, b, log, progress=not args.no_progress)
            if code != 0:
                break
    except KeyboardInterrupt:
        code = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if fresh and code == 2 and len(log.sessions[-1]["stages"]) == 1:
        # The first search refused its input (data the checks above cannot see without
        # decoding it, say): it said why; nothing ran, so nothing is left behind.
        shutil.rmtree(campaign.work, ignore_errors=True)
        return 2
    try:
        rows = write_result(campaign, log)
    except KeyboardInterrupt:
        rows, code = None, 130
    if rows is not None:
        print(f"\ncampaign {campaign.name}: {len(rows)} model(s) in {campaign.out}/leaderboard.csv")
        for b in campaign.budgets:
            print(verdict(rows, b.budget).replace("**", ""))
    if code == 130:
        print("interrupted: run the same command again to continue", file=sys.stderr)
    elif code != 0:
        print(f"stopped: a stage exited with code {code} (see above)", file=sys.stderr)
    return code


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def check_plans(campaign: Campaign) -> None:
    """Every budget's search resolves (budget floor, space, device, storage), and the retraining
    recipe merges: all of it before anything is written."""
    from search import run as search_run

    parser = search_run.build_parser()
    for b in campaign.budgets:
        search_run.resolve(parser.parse_args([]), presets=campaign.search_tables(b))
    TrainConfig(**campaign.retrain_train)
    source = str(campaign.data["source"])
    if source.lower() not in ("cifar10", "cifar100") and not Path(source).expanduser().exists():
        raise UserError(
            f"data {source!r}: no such file or folder (expected cifar10, cifar100, a folder "
            "ROOT/{train,test}/<class>/*.png|jpg, or a .tar/.tar.gz of one; --data overrides "
            "the preset's)"
        )


if __name__ == "__main__":
    sys.exit(main())
