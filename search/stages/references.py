"""The budget's hand-designed networks inside the search, and where they rank.

A search is worth running when it finds a network better than the ones a practitioner would
write by hand at the same budget. So the references enter the study itself: those the space can
express (``space.searchspace.express``: the same choices draw exactly that network) are enqueued
as the study's first trials, carrying the user attribute ``reference``; they train like any
trial but are never pruned, since they are the yardstick. Those the space cannot express (a
head dropout the space lacks, widths off its grid, over the budget) train beside the search at
the trial setting, on the same split, and are kept in the study attribute ``yardsticks``.
``standing`` says where each ranks among the trials and whether a searched network beat them.
"""

from __future__ import annotations

import dataclasses
import threading
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from search.data import Dataset
from search.experiment import Experiment
from search.jobs import DatasetCache, Job, run_jobs
from search.storage import ClaimLock
from search.study import SearchSettings, is_feasible_complete, rung_epochs
from space import Augment, Genotype, count, format_count
from space.errors import UserError
from space.searchspace import SearchSpace, express

ROOT = Path(__file__).resolve().parent.parent.parent
REFERENCES = ROOT / "configs" / "reference"
YARDSTICK_SEED = 1_000_000  # a yardstick trains with seed + YARDSTICK_SEED + crc32(its name)


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


@dataclass(frozen=True)
class Reference:
    """A hand-designed network of the budget, as it trains in this search."""

    name: str  # the file's stem
    genotype: Genotype  # with the search's recipe when the search fixes one
    params: int
    macs: int


def resolve_references(
    names: Sequence[str] | None,
    *,
    budget: int,
    max_macs: int | None,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    recipe: Augment | None,
) -> list[Reference]:
    """The references of a search: ``names`` (files in configs/reference/ or paths), or with
    None those of the budget: every file in configs/reference/ that fills half to all of the
    budget (the share a search spends its trials on) and keeps to ``max_macs``."""
    auto = names is None
    paths = sorted(REFERENCES.glob("*.toml")) if auto else [reference_path(n) for n in names]
    out = []
    for path in paths:
        g = Genotype.load(path)
        if recipe is not None:
            g = g.replace(augment=recipe)
        params, macs = count(
            g, num_classes=num_classes, in_channels=in_channels, image_size=image_size
        )
        if auto and not (budget / 2 <= params <= budget and (max_macs is None or macs <= max_macs)):
            continue
        out.append(Reference(path.stem, g, params, macs))
    stems = [r.name for r in out]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise UserError(f"references share a name ({', '.join(twice)}); rename one of the files")
    return out


def seed_study(
    study: optuna.Study,
    space: SearchSpace,
    references: Sequence[Reference],
    *,
    budget: int,
    max_macs: int | None,
    dataset: Dataset,
) -> dict[str, Any]:
    """Enqueue, once, the references the space can express as the study's next trials; the
    study attribute ``references`` records which were enqueued and which are yardsticks. The
    caller holds the study's claim lock (two processes starting together enqueue once)."""
    recorded = study.user_attrs.get("references")
    if isinstance(recorded, dict):
        _enqueue_again(study, recorded)
        return recorded
    if study.trials:
        # A study made before references entered studies: it goes on as it was made.
        record = {"enqueued": [], "yardsticks": [], "genotypes": {}, "older_study": True}
        study.set_user_attr("references", record)
        return record
    enqueued, yardsticks = [], []
    for r in references:
        values = express(
            r.genotype,
            space,
            budget=budget,
            num_classes=dataset.num_classes,
            in_channels=dataset.in_channels,
            max_macs=max_macs,
            image_size=dataset.image_size,
        )
        if values is None:
            yardsticks.append(r.name)
        else:
            study.enqueue_trial(values, user_attrs={"reference": r.name})
            enqueued.append(r.name)
    record = {
        "enqueued": enqueued,
        "yardsticks": yardsticks,
        "genotypes": {r.name: r.genotype.to_dict() for r in references},
    }
    study.set_user_attr("references", record)
    return record


def _enqueue_again(study: optuna.Study, record: dict[str, Any]) -> None:
    """An enqueued reference whose trial failed (a Ctrl-C in it, say: Optuna fails it and
    nothing retries it) is enqueued again, with the values its trial had."""
    alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    trials = study.get_trials(deepcopy=False)
    for name in record.get("enqueued", []):
        mine = [t for t in trials if t.user_attrs.get("reference") == name]
        if mine and not any(t.state in alive for t in mine):
            study.enqueue_trial(dict(mine[0].params), user_attrs={"reference": name})


def train_yardsticks(
    study: optuna.Study,
    settings: SearchSettings,
    dataset: Dataset,
    references: Sequence[Reference],
    *,
    seed: int,
    device: torch.device,
    concurrency: int,
    folder: Path,
    lock: ClaimLock,
    progress: bool,
    stop: threading.Event | None = None,
    mps: bool = False,
) -> dict[str, Any]:
    """Train the references the space cannot express at the trial setting (the trial's recipe,
    epochs and data, validated where Hyperband reads a trial), each into its own run folder
    (resumable); record their validation accuracies in the study attribute ``yardsticks``."""
    record = study.user_attrs.get("references") or {}
    names = set(record.get("yardsticks", []))
    todo = [r for r in references if r.name in names]
    if not todo:
        return dict(study.user_attrs.get("yardsticks") or {})
    train = settings.train
    reads = tuple(sorted(rung_epochs(settings.min_epochs, train.epochs, settings.reduction_factor)))
    jobs = []
    for r in todo:
        # A seed of the name's own, so that another list of references trains the same ones.
        config = dataclasses.replace(
            train, seed=seed + YARDSTICK_SEED + zlib.crc32(r.name.encode())
        )
        experiment = Experiment(
            name=r.name,
            genotype=r.genotype,
            data=settings.data,
            train=config,
            eval_each_epoch=True,
            eval_epochs=reads,
            test=False,
        )
        jobs.append(Job(experiment, folder / r.name / f"seed-{config.seed}", label=r.name))
    outcomes = run_jobs(
        jobs,
        datasets=DatasetCache({settings.data: dataset}),
        device=device,
        concurrency=concurrency,
        mps=mps,
        progress=progress,
        desc="yardsticks",
        stop=stop,
    )
    result = {}
    for r, o in zip(todo, outcomes, strict=True):
        m = o.metrics
        result[r.name] = {
            "val_acc": None if m is None else m.get("val_acc"),
            "curve": None if m is None else m.get("val_curve"),
            "params": r.params,
            "macs": r.macs,
            "key": r.genotype.key(),
            "seed": o.job.experiment.train.seed,
            **({"error": o.error} if o.error else {}),
        }
    lock.acquire()
    try:
        study.set_user_attr("yardsticks", result)
    finally:
        lock.release()
    return result


# -- where they stand -------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """One reference among the trials: its accuracy at the trial setting and its rank."""

    name: str
    kind: str  # "trial" (enqueued, trained as a trial) or "yardstick" (trained beside)
    val_acc: float | None
    rank: int | None  # 1 = best among the ranked trials and yardsticks
    params: int
    macs: int | None = None
    trial: int | None = None
    over_budget: bool = False


@dataclass(frozen=True)
class Standing:
    """Where the references rank among the search's trials."""

    ranked: int  # trials (one per architecture) and yardsticks with an accuracy
    places: tuple[Place, ...]
    best_reference: Place | None
    best_searched: tuple[int, float] | None  # (trial, validation accuracy)
    searched_above: int  # searched architectures above the best reference

    @property
    def beaten(self) -> bool | None:
        """Whether a searched architecture beat the best reference at the trial setting."""
        if self.best_reference is None or self.best_reference.val_acc is None:
            return None
        return self.searched_above > 0

    def lines(self) -> list[str]:
        """Plain text: a line per reference, then the verdict at the trial setting."""
        if not self.places:
            return []
        out = []
        for p in self.places:
            where = (
                f"rank {p.rank} of {self.ranked}"
                if p.rank is not None
                else "no accuracy (not finished or diverged)"
            )
            how = f"trial {p.trial}" if p.kind == "trial" else "yardstick beside the search"
            acc = "" if p.val_acc is None else f"{p.val_acc:.4f}  "
            over = " (over the budget)" if p.over_budget else ""
            out.append(f"  {p.name:<20} {acc}{where}, {how}, {format_count(p.params)}{over}")
        b = self.best_reference
        if b is not None and b.val_acc is not None and self.best_searched is not None:
            n, value = self.best_searched
            if self.searched_above:
                out.append(
                    f"  {self.searched_above} searched architecture(s) above {b.name} at the "
                    f"trial setting; the best, trial {n}, by {100 * (value - b.val_acc):+.2f} "
                    "points"
                )
            else:
                out.append(
                    f"  no searched architecture beat {b.name} at the trial setting (the best, "
                    f"trial {n}, {100 * (value - b.val_acc):+.2f} points)"
                )
        return out


def is_reference(t: FrozenTrial) -> bool:
    return "reference" in t.user_attrs


def searched_trials(study: optuna.Study, budget: int) -> list[FrozenTrial]:
    """Complete trials of searched architectures within the budget, one per genotype (no
    reference, no duplicate), best first."""
    return _searched(study.get_trials(deepcopy=False), budget)


def _searched(trials: Sequence[FrozenTrial], budget: int) -> list[FrozenTrial]:
    trials = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and is_feasible_complete(t, budget)
        and "duplicate_of" not in t.user_attrs
        and not is_reference(t)
    ]
    return sorted(trials, key=lambda t: (-t.value, t.number))  # type: ignore[operator]


def standing(study: optuna.Study, budget: int) -> Standing:
    """Where the references (enqueued trials and yardsticks) rank among the search's trials,
    by validation accuracy at the trial setting."""
    return standing_of(study.get_trials(deepcopy=False), study.user_attrs, budget)


def standing_of(trials: Sequence[FrozenTrial], attrs: Mapping[str, Any], budget: int) -> Standing:
    """``standing`` from a study's trials and user attributes (a report's view of it)."""
    searched = _searched(trials, budget)
    places: list[Place] = []
    by_name: dict[str, FrozenTrial] = {}
    for t in trials:  # per reference its complete trial, else its latest
        if is_reference(t) and t.state != TrialState.WAITING:
            name = t.user_attrs["reference"]
            if name not in by_name or by_name[name].state != TrialState.COMPLETE:
                by_name[name] = t
    for name, t in by_name.items():
        value = t.value if t.state == TrialState.COMPLETE else None
        params = t.user_attrs.get("params", 0)
        places.append(
            Place(
                name,
                "trial",
                value,
                None,
                params,
                t.user_attrs.get("macs"),
                t.number,
                params > budget,
            )
        )
    for name, y in (attrs.get("yardsticks") or {}).items():
        places.append(
            Place(
                name,
                "yardstick",
                y.get("val_acc"),
                None,
                y.get("params", 0),
                y.get("macs"),
                None,
                y.get("params", 0) > budget,
            )
        )
    pool = [t.value for t in searched] + [p.val_acc for p in places if p.val_acc is not None]
    ranked = []
    for p in places:
        rank = None if p.val_acc is None else 1 + sum(v > p.val_acc for v in pool)
        ranked.append(dataclasses.replace(p, rank=rank))
    ranked.sort(key=lambda p: (p.rank is None, p.rank or 0, p.name))
    within = [p for p in ranked if p.val_acc is not None and not p.over_budget]
    best = within[0] if within else None
    above = 0 if best is None else sum(t.value > best.val_acc for t in searched)  # type: ignore[operator]
    return Standing(
        ranked=len(pool),
        places=tuple(ranked),
        best_reference=best,
        best_searched=(searched[0].number, float(searched[0].value)) if searched else None,  # type: ignore[arg-type]
        searched_above=above,
    )


def genotype_of_reference(study: optuna.Study, name: str) -> Genotype | None:
    """A reference's genotype as the study trained it (from its record)."""
    record = study.user_attrs.get("references") or {}
    raw = (record.get("genotypes") or {}).get(name)
    return None if raw is None else Genotype.from_dict(raw)
