"""Measure the search's proxy: how well do short trainings rank architectures for long ones?

    python -m search.fidelity --config configs/fidelity/cpu-400k.toml

A search ranks candidates by a short, cheap training and keeps the best; the user keeps the
network after a long one. This command draws architectures at random from a space under a
budget, adds the budget's reference networks, trains every one at each short setting of the
preset and at a long setting (two seeds), all on the training split and scored on the
validation split (never the test split), and reports for each short setting how well its
ranking matches the long one:

- Spearman's rho and Kendall's tau-b between the short accuracy and the mean long accuracy
  over architectures, with a bootstrap interval for rho (architectures resampled);
- the overlap of the top 5 by the short setting with the top 5 by the long one;
- the compute of the setting in epochs of the full model (epochs times the share of the full
  model's multiply-accumulates per image that the setting's model has);

beside the long setting's own seed-to-seed rho: the ceiling no proxy can beat, since the long
setting does not agree with itself better than that.

A short setting is a complete training schedule (warmup, then cosine decay to zero within it)
of ``epochs`` epochs, read at the epochs in ``reads`` (default its last): the search's trial of
today is one such schedule read where Hyperband reads it. A setting can make a cheaper model of
each architecture: ``image_size`` trains and scores it on smaller images (crop padding and
cutout scaled alike), ``width`` scales every width.

Every architecture trains with one recipe (``recipe = "standard"``, the references' crop 4,
flip, label smoothing 0.1; ``"own"`` keeps what each came with), so the accuracies compare
architectures. Work goes to ``results/fidelity/<name>/`` (a run folder per architecture,
setting and seed; killed, the same command resumes), the result to
``results/reference/<name>/``: ``fidelity.json``, ``fidelity.csv`` (one row per architecture
and read), ``fidelity.html`` / ``.png`` (short against long accuracy, one panel per setting),
``README.md`` and the preset as run. ``--summarize`` writes the result from what exists.

Exit 0 when done, 1 when a stage failed or the disk is full, 2 on bad input (one line on
stderr, nothing written), 130 when interrupted (run the same command again to continue).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import statistics
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from search import provenance
from search.campaign.log import Log
from search.config import DataConfig, configure_torch, from_mapping, resolve_device
from search.data import check_split_arguments, decode, save_cache, split
from search.experiment import Experiment
from search.jobs import DatasetCache, Job, Outcome, check_jobs, run_jobs
from search.stages.references import reference_path
from search.study import STANDARD_RECIPE, is_name, parse_macs, resolve_space
from search.training import TrainConfig
from space import Genotype, count, format_count, parse_budget
from space._budget import scale_widths
from space._cli import ArgumentParser
from space._io import check_writable_folder, disk_full_message, write_json_atomic, write_text_atomic
from space._toml import load_toml
from space.errors import UserError
from space.searchspace import SearchSpace, sample

TOP = 5  # the top-k overlap reported
BOOTSTRAP = 2000  # resamples of the architectures for rho's interval
INTERVAL = 0.90  # the bootstrap interval's coverage


# -- statistics -------------------------------------------------------------------------------


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's correlation; nan when either side is constant or fewer than 2 points."""
    if len(x) < 2:
        return math.nan
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties at their mean rank)."""
    return pearson(ranks(x), ranks(y))


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties on either side accounted for); nan when a side is constant."""
    concordant = discordant = ties_x = ties_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator > 0 else math.nan


def top_overlap(x: Sequence[float], y: Sequence[float], k: int = TOP) -> int:
    """How many of the ``k`` best by ``x`` are among the ``k`` best by ``y``. Ties are broken
    by a fixed shuffle, another one on each side: breaking them by position on both sides
    would count tied entries as agreeing."""
    tie_x, tie_y = list(range(len(x))), list(range(len(y)))
    random.Random(1).shuffle(tie_x)
    random.Random(2).shuffle(tie_y)
    best_x = sorted(range(len(x)), key=lambda i: (-x[i], tie_x[i]))[:k]
    best_y = sorted(range(len(y)), key=lambda i: (-y[i], tie_y[i]))[:k]
    return len(set(best_x) & set(best_y))


def against_seeds(x: Sequence[float], seeds: Sequence[Sequence[float]], measure: Any) -> float:
    """``measure(x, y)`` for each long seed's accuracies ``y``, averaged: the figure that
    compares with the long setting's seed-to-seed one (the ceiling), which also sets one
    training against one training."""
    return statistics.fmean(measure(x, y) for y in seeds)


def seed_to_seed(seeds: Sequence[Sequence[float]], measure: Any) -> float:
    """``measure`` between every two long seeds, averaged: the ceiling."""
    pairs = [(a, b) for i, a in enumerate(seeds) for b in seeds[i + 1 :]]
    return statistics.fmean(measure(a, b) for a, b in pairs)


def bootstrap_interval(
    x: Sequence[float],
    seeds: Sequence[Sequence[float]],
    *,
    reps: int = BOOTSTRAP,
    seed: int = 0,
) -> tuple[float, float]:
    """The central ``INTERVAL`` of ``against_seeds(x, seeds, spearman)`` over ``reps``
    resamples of the architectures."""
    rng = random.Random(seed)
    n = len(x)
    values = []
    for _ in range(reps):
        pick = [rng.randrange(n) for _ in range(n)]
        rho = against_seeds([x[i] for i in pick], [[y[i] for i in pick] for y in seeds], spearman)
        if not math.isnan(rho):
            values.append(rho)
    if not values:
        return math.nan, math.nan
    values.sort()
    tail = (1 - INTERVAL) / 2
    low = values[int(tail * (len(values) - 1))]
    high = values[math.ceil((1 - tail) * (len(values) - 1))]
    return low, high


# -- the preset ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FidelityConfig:
    """``[fidelity]``: what is measured, where and how fast."""

    budget: str = "400k"  # parameter budget of the drawn architectures
    max_macs: str | None = None  # and their compute budget (multiply-accumulates per image)
    space: str = "default"  # search-space preset: a name in configs/space/ or a TOML path
    architectures: int = 13  # drawn at random (distinct), besides the references
    seed: int = 0  # of the draws and of every training
    recipe: str = "standard"  # standard: every network trains with one recipe; own: its own
    default: str = ""  # the short setting (a read's name) that the search uses now
    name: str | None = None  # names the result folder; default the preset's file name
    description: str = ""
    device: str = "auto"
    concurrency: int = 1  # trainings at once (processes sharing the device)

    def __post_init__(self) -> None:
        parse_budget(self.budget)
        if self.max_macs is not None:
            parse_macs(self.max_macs)
        if self.architectures < 0:
            raise UserError(f"architectures must be >= 0, but got {self.architectures}")
        if self.recipe not in ("standard", "own"):
            raise UserError(f"recipe must be 'standard' or 'own', but got {self.recipe!r}")
        if self.concurrency < 1:
            raise UserError(f"concurrency must be >= 1, but got {self.concurrency}")
        if not 0 <= self.seed < 2**40:
            raise UserError(f"seed must be an integer in [0, 2**40), but got {self.seed}")


# What a [long] or [[short]] table may hold besides TrainConfig keys.
_SETTING_KEYS = ("name", "epochs", "reads", "image_size", "width", "seeds")


@dataclass(frozen=True)
class Setting:
    """One way to train every architecture: a complete schedule, read at some epochs."""

    name: str
    epochs: int
    reads: tuple[int, ...]  # epochs at which validation accuracy is read (the last included)
    image_size: int | None = None  # train and score on images of this side (a cheaper model)
    width: float = 1.0  # every width times this (a cheaper model)
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # TrainConfig overrides
    seeds: int = 1

    def read_name(self, epoch: int) -> str:
        return self.name if len(self.reads) == 1 else f"{self.name}@{epoch}"

    @property
    def read_names(self) -> list[str]:
        return [self.read_name(e) for e in self.reads]

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "epochs": self.epochs,
            "reads": list(self.reads),
            "image_size": self.image_size,
            "width": self.width,
            "seeds": self.seeds,
            "train": dict(self.train),
        }


@dataclass(frozen=True)
class Plan:
    """A fidelity preset, read and checked."""

    name: str
    preset: Path
    config: FidelityConfig
    budget: int
    max_macs: int | None
    space: SearchSpace
    references: tuple[Path, ...]
    data: DataConfig
    train: Mapping[str, Any]  # TrainConfig keys shared by every setting
    long: Setting
    shorts: tuple[Setting, ...]
    work: Path
    out: Path

    def record(self) -> dict[str, Any]:
        """What must not change when a measurement is resumed."""
        return {
            "budget": self.budget,
            "max_macs": self.max_macs,
            "space": self.space.to_dict(),
            "architectures": self.config.architectures,
            "references": [p.stem for p in self.references],
            "seed": self.config.seed,
            "recipe": self.config.recipe,
            "data": {k: v for k, v in dataclasses.asdict(self.data).items() if k != "source"},
            "train": dict(self.train),
            "long": self.long.record(),
            "short": [s.record() for s in self.shorts],
        }


def load_plan(
    path: Path,
    *,
    data: str | None = None,
    device: str | None = None,
    concurrency: int | None = None,
    results: Path = Path("results"),
    out: Path | None = None,
) -> Plan:
    """Read and check a fidelity preset; nothing is created."""
    raw = load_toml(path)
    tables = ("fidelity", "data", "train", "long", "short")
    for key in raw:
        if key not in tables:
            raise UserError(
                f"{path}: unknown table or key {key!r}; allowed: [fidelity], [data], [train], "
                "[long], [[short]]"
            )
    for key in ("fidelity", "data", "train", "long"):
        if not isinstance(raw.get(key, {}), Mapping):
            raise UserError(f"{path}: {key!r} must be a table [{key}], but got {raw[key]!r}")
    table = dict(raw.get("fidelity", {}))
    references = _names(table.pop("references", []), path)
    if device is not None:
        table["device"] = device
    if concurrency is not None:
        table["concurrency"] = concurrency
    config = from_mapping(FidelityConfig, table, where=f"{path} [fidelity]")
    name = config.name or path.stem
    if not is_name(name):
        raise UserError(
            f"{path} [fidelity] name must be letters, digits, '.', '_' or '-' (it names "
            f"folders), but got {name!r}"
        )
    data_table = dict(raw.get("data", {}))
    if data is not None:
        data_table["source"] = data
    if "source" not in data_table:
        raise UserError(f"{path} [data] has no source: name the data (or pass --data)")
    data_config = from_mapping(DataConfig, data_table, where=f"{path} [data]")
    if data_config.val_size == 0:
        raise UserError(f"{path} [data] val_size must be >= 1: the settings are scored on it")
    check_split_arguments(val_size=data_config.val_size, subset=data_config.subset)
    train = dict(raw.get("train", {}))
    from_mapping(TrainConfig, train, where=f"{path} [train]")
    for key in ("epochs", "seed"):
        if key in train:
            raise UserError(f"{path} [train]: {key} is set per setting and seed; remove it")
    long = _setting(raw.get("long"), where=f"{path} [long]", name="long", train=train)
    shorts_raw = raw.get("short")
    if not isinstance(shorts_raw, list) or not shorts_raw:
        raise UserError(
            f"{path}: no [[short]] settings; give at least one, e.g. [[short]] name = "
            '"complete-4", epochs = 4'
        )
    shorts = tuple(
        _setting(s, where=f"{path} [[short]] #{i + 1}", name=None, train=train)
        for i, s in enumerate(shorts_raw)
    )
    names = [n for s in shorts for n in s.read_names] + ["long"]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"{path}: settings share a name ({', '.join(twice)})")
    if any(s.seeds != 1 for s in shorts):
        raise UserError(f"{path} [[short]]: seeds is for [long] only (short settings run once)")
    if long.seeds > 10:  # seed_of gives each setting 10 seeds
        raise UserError(f"{path} [long] seeds must be at most 10, but got {long.seeds}")
    if long.seeds < 2:
        raise UserError(
            f"{path} [long] seeds must be >= 2: the seed-to-seed rho of the long setting is the "
            f"ceiling every short setting is weighed against, but got {long.seeds}"
        )
    if config.default and config.default not in names:
        raise UserError(
            f"{path} [fidelity] default {config.default!r} names no short setting (settings: "
            f"{', '.join(names[:-1])})"
        )
    space = SearchSpace.load(resolve_space(config.space))
    refs = tuple(reference_path(r) for r in references)
    for p in refs:
        Genotype.load(p)
    if config.architectures + len(refs) < 3:
        raise UserError(
            f"{path}: {config.architectures + len(refs)} architectures cannot be ranked; give "
            "at least 3 (architectures plus references)"
        )
    return Plan(
        name=name,
        preset=path,
        config=config,
        budget=parse_budget(config.budget),
        max_macs=None if config.max_macs is None else parse_macs(config.max_macs),
        space=space,
        references=refs,
        data=data_config,
        train=train,
        long=long,
        shorts=shorts,
        work=results / "fidelity" / name,
        out=out or results / "reference" / name,
    )


def _names(value: Any, path: Path) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(
            f"{path} [fidelity] references must be a list of names in configs/reference/ or "
            f"TOML paths, but got {value!r}"
        )
    return value


def _setting(raw: Any, *, where: str, name: str | None, train: Mapping[str, Any]) -> Setting:
    if not isinstance(raw, Mapping):
        raise UserError(f"{where} must be a table, but got {raw!r}")
    train_keys = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in raw:
        if key not in _SETTING_KEYS and key not in train_keys:
            raise UserError(
                f"unknown key {key!r} in {where}; allowed: {', '.join(_SETTING_KEYS)} and "
                "training keys (warmup_epochs, lr, ...)"
            )
    if name is None:
        name = raw.get("name")
        if not isinstance(name, str) or not is_name(name) or "@" in name:
            raise UserError(f"{where} needs a name of letters, digits, '.', '_' or '-'")
    epochs = raw.get("epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise UserError(f"{where} epochs must be an integer >= 1, but got {epochs!r}")
    reads = raw.get("reads", [epochs])
    if (
        not isinstance(reads, list)
        or not reads
        or not all(
            isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= epochs for r in reads
        )
        or sorted(set(reads)) != reads
    ):
        raise UserError(
            f"{where} reads must be a rising list of epochs in [1, {epochs}], but got {reads!r}"
        )
    image_size = raw.get("image_size")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or not image_size >= 4
    ):
        raise UserError(f"{where} image_size must be an integer >= 4, but got {image_size!r}")
    width = raw.get("width", 1.0)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 4:
        raise UserError(f"{where} width must be a number in (0, 4], but got {width!r}")
    seeds = raw.get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"{where} seeds must be an integer >= 1, but got {seeds!r}")
    overrides = {k: v for k, v in raw.items() if k in train_keys and k != "epochs"}
    if "seed" in overrides:
        raise UserError(f"{where}: seed is the measurement's ([fidelity] seed); remove it")
    from_mapping(TrainConfig, {**train, **overrides, "epochs": epochs}, where=where)
    return Setting(
        name=name,
        epochs=epochs,
        reads=tuple(reads),
        image_size=image_size,
        width=float(width),
        train=overrides,
        seeds=seeds,
    )


# -- the architectures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    """One architecture measured: drawn from the space, or a reference."""

    name: str  # arch-01, or the reference file's stem
    source: str  # "drawn" or "reference"
    genotype: Genotype


def draw_architectures(plan: Plan, *, num_classes: int, image_size: tuple[int, int]) -> list[Arch]:
    """``architectures`` distinct networks drawn at random from the space, within both budgets,
    with the plan's recipe; then the references. Seeded: the same plan draws the same ones."""
    recipe = STANDARD_RECIPE if plan.config.recipe == "standard" else None
    space = plan.space.with_recipe(recipe) if recipe is not None else plan.space
    study = optuna.create_study(
        sampler=optuna.samplers.RandomSampler(seed=plan.config.seed), direction="maximize"
    )
    archs: list[Arch] = []
    keys: set[str] = set()
    attempts = 0
    while len(archs) < plan.config.architectures:
        attempts += 1
        if attempts > 100 * max(1, plan.config.architectures):
            raise UserError(
                f"space {plan.space.name!r} gave {len(archs)} distinct networks within the "
                f"budgets in {attempts - 1} draws; widen the space or the budgets"
            )
        trial = study.ask()
        drawn = sample(
            trial,
            space,
            budget=plan.budget,
            num_classes=num_classes,
            max_macs=plan.max_macs,
            image_size=image_size,
        )
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        g = drawn.genotype
        within = drawn.fitted and drawn.params <= plan.budget
        within = within and (plan.max_macs is None or drawn.macs <= plan.max_macs)
        if within and g.key() not in keys:
            keys.add(g.key())
            archs.append(Arch(f"arch-{len(archs) + 1:02d}", "drawn", g))
    for path in plan.references:
        g = Genotype.load(path)
        if recipe is not None:
            g = g.replace(augment=recipe)
        archs.append(Arch(path.stem, "reference", g))
    return archs


def variant(g: Genotype, setting: Setting, full_size: int) -> Genotype:
    """The network a setting trains for ``g``: narrower by ``width``; on smaller images the
    crop padding and cutout shrink with them."""
    if setting.width != 1.0:
        g = scale_widths(g, setting.width, multiple=1)
    if setting.image_size is not None and setting.image_size != full_size:
        ratio = setting.image_size / full_size
        a = g.augment
        g = g.replace(
            augment=dataclasses.replace(
                a,
                crop_padding=round(a.crop_padding * ratio),
                cutout=round(a.cutout * ratio),
            )
        )
    return g


def seed_of(plan: Plan, arch_index: int, setting_index: int, replica: int) -> int:
    """Every training its own seed: no two runs share initial weights or data order."""
    return plan.config.seed * 1_000_003 + 1000 * arch_index + 10 * setting_index + replica


def jobs_of(plan: Plan, archs: Sequence[Arch], full_size: int) -> list[tuple[Job, str, Arch]]:
    """(job, setting name, architecture) of every training the measurement needs."""
    settings = [plan.long, *plan.shorts]
    out = []
    for a, arch in enumerate(archs):
        for s, setting in enumerate(settings):
            data = dataclasses.replace(
                plan.data, image_size=setting.image_size or plan.data.image_size
            )
            for r in range(setting.seeds):
                train = TrainConfig(
                    **{**plan.train, **setting.train, "epochs": setting.epochs},
                    seed=seed_of(plan, a, s, r),
                )
                experiment = Experiment(
                    name=arch.name,
                    genotype=variant(arch.genotype, setting, full_size),
                    data=data,
                    train=train,
                    eval_each_epoch=True,
                    eval_epochs=setting.reads,
                    test=False,
                )
                folder = plan.work / "runs" / arch.name / setting.name / f"seed-{train.seed}"
                label = f"{arch.name} {setting.name}" + (
                    f" seed {r + 1}" if setting.seeds > 1 else ""
                )
                out.append((Job(experiment, folder, label=label), setting.name, arch))
    return out


# -- the analysis -------------------------------------------------------------------------------


def analyse(
    plan: Plan,
    archs: Sequence[Arch],
    outcomes: Mapping[tuple[str, str], list[Outcome]],
    *,
    costs: Mapping[tuple[str, str], float],
) -> dict[str, Any]:
    """The figures of ``fidelity.json`` from the runs that finished. ``outcomes`` maps
    (architecture, setting) to its runs, ``costs`` to the share of the full model's MACs."""

    def accuracy_at(o: Outcome, epoch: int) -> float | None:
        if o.metrics is None:
            return None
        curve = {int(e): a for e, a in o.metrics.get("val_curve", [])}
        return curve.get(epoch)

    long_runs: dict[str, list[float]] = {}
    for arch in archs:
        runs = outcomes.get((arch.name, plan.long.name), [])
        accs = [accuracy_at(o, plan.long.epochs) for o in runs]
        if len(runs) == plan.long.seeds and all(a is not None for a in accs):
            long_runs[arch.name] = accs  # type: ignore[assignment]
    shorts: list[dict[str, Any]] = []
    for setting in plan.shorts:
        for epoch in setting.reads:
            name = setting.read_name(epoch)
            pairs = []
            for arch in archs:
                runs = outcomes.get((arch.name, setting.name), [])
                value = accuracy_at(runs[0], epoch) if runs else None
                if value is not None and arch.name in long_runs:
                    pairs.append((arch.name, value, long_runs[arch.name]))
            share = [
                costs[(a.name, setting.name)] for a in archs if (a.name, setting.name) in costs
            ]
            shorts.append(
                _agreement(name, pairs, seed=plan.config.seed)
                | {
                    "setting": setting.name,
                    "epoch": epoch,
                    "epochs": setting.epochs,
                    "image_size": setting.image_size,
                    "width": setting.width,
                    "cost_epochs": epoch * statistics.fmean(share) if share else None,
                }
            )
    names = sorted(long_runs)
    seeds = [[long_runs[n][k] for n in names] for k in range(plan.long.seeds)]
    spread = [statistics.stdev(long_runs[n]) for n in names]
    long = {
        "name": plan.long.name,
        "epochs": plan.long.epochs,
        "seeds": plan.long.seeds,
        "architectures": len(names),
        "ceiling_spearman": _finite(seed_to_seed(seeds, spearman)) if len(names) >= 3 else None,
        "ceiling_kendall": _finite(seed_to_seed(seeds, kendall)) if len(names) >= 3 else None,
        "ceiling_top5_overlap": (
            _finite(seed_to_seed(seeds, top_overlap)) if len(names) >= TOP else None
        ),
        "seed_spread": statistics.fmean(spread) if spread else None,  # mean sd over seeds
        "accuracy_range": [
            min(map(statistics.fmean, long_runs.values())),
            max(map(statistics.fmean, long_runs.values())),
        ]
        if names
        else None,
        "cost_epochs": plan.long.epochs,
    }
    return {
        "name": plan.name,
        "architectures": len(names),
        "planned_architectures": len(archs),
        "long": long,
        "short": shorts,
        "default": plan.config.default or None,
    }


def _agreement(
    name: str, pairs: Sequence[tuple[str, float, Sequence[float]]], *, seed: int
) -> dict[str, Any]:
    """How one short setting agrees with the long one: against each long seed, averaged (what
    compares with the ceiling), and against the mean of the seeds (less noisy, so it can pass
    the ceiling)."""
    short = [p[1] for p in pairs]
    seeds = [[p[2][k] for p in pairs] for k in range(len(pairs[0][2]))] if pairs else []
    mean = [statistics.fmean(p[2]) for p in pairs]
    enough = len(pairs) >= 3
    low, high = bootstrap_interval(short, seeds, seed=seed) if enough else (None, None)
    top = len(pairs) >= TOP
    return {
        "name": name,
        "architectures": len(pairs),
        "spearman": _finite(against_seeds(short, seeds, spearman)) if enough else None,
        "spearman_interval": [_finite(low), _finite(high)] if enough else None,
        "kendall": _finite(against_seeds(short, seeds, kendall)) if enough else None,
        "top5_overlap": _finite(against_seeds(short, seeds, top_overlap)) if top else None,
        "spearman_vs_mean": _finite(spearman(short, mean)) if enough else None,
        "top5_overlap_vs_mean": top_overlap(short, mean) if top else None,
    }


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else round(x, 4)


# -- the result -----------------------------------------------------------------------------------


def rows_of(
    plan: Plan,
    archs: Sequence[Arch],
    outcomes: Mapping[tuple[str, str], list[Outcome]],
    costs: Mapping[tuple[str, str], float],
    sizes: Mapping[str, tuple[int, int]],
) -> list[dict[str, Any]]:
    """``fidelity.csv``: one row per architecture and read (and per seed of the long setting).
    ``sizes`` maps an architecture to its (parameters, MACs)."""
    rows = []
    for arch in archs:
        long_accs = [_read(o, plan.long.epochs) for o in outcomes.get((arch.name, "long"), [])]
        done = [a for a in long_accs if a is not None]
        long_mean = statistics.fmean(done) if len(done) == plan.long.seeds else None
        params, macs = sizes[arch.name]
        base = {
            "architecture": arch.name,
            "source": arch.source,
            "params": params,
            "macs": macs,
            "long_mean": long_mean,
            "key": arch.genotype.key(),
        }
        for r, acc in enumerate(long_accs):
            rows.append(
                base
                | {
                    "setting": "long",
                    "epoch": plan.long.epochs,
                    "seed": r + 1,
                    "cost_epochs": plan.long.epochs,
                    "val_acc": acc,
                }
            )
        for setting in plan.shorts:
            runs = outcomes.get((arch.name, setting.name), [])
            share = costs.get((arch.name, setting.name))
            for epoch in setting.reads:
                rows.append(
                    base
                    | {
                        "setting": setting.read_name(epoch),
                        "epoch": epoch,
                        "seed": 1,
                        "cost_epochs": None if share is None else round(epoch * share, 4),
                        "val_acc": _read(runs[0], epoch) if runs else None,
                    }
                )
    return rows


def _read(o: Outcome, epoch: int) -> float | None:
    """Validation accuracy of a finished run after ``epoch``; None when it has none."""
    if o.metrics is None:
        return None
    return {int(e): float(a) for e, a in o.metrics.get("val_curve", [])}.get(epoch)


def figure(plan: Plan, result: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Any:
    """Short against long validation accuracy, one panel per short setting."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    shorts = list(result["short"])
    cols = min(3, len(shorts))
    lines = math.ceil(len(shorts) / cols)
    titles = [
        f"{s['name']} ({s['cost_epochs']:.1f} ep): rho "
        + ("n/a" if s["spearman"] is None else f"{s['spearman']:.2f}")
        if s["cost_epochs"] is not None
        else s["name"]
        for s in shorts
    ]
    fig = make_subplots(
        rows=lines, cols=cols, subplot_titles=titles, horizontal_spacing=0.07, vertical_spacing=0.17
    )
    by_setting: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_setting.setdefault(row["setting"], []).append(row)
    for k, s in enumerate(shorts):
        r, c = divmod(k, cols)
        points = [
            row
            for row in by_setting.get(s["name"], [])
            if row["val_acc"] is not None and row["long_mean"] is not None
        ]
        for source, symbol, color in (
            ("drawn", "circle", "#2a9d8f"),
            ("reference", "diamond", "#e76f51"),
        ):
            mine = [p for p in points if p["source"] == source]
            fig.add_trace(
                go.Scatter(
                    x=[100 * p["val_acc"] for p in mine],
                    y=[100 * p["long_mean"] for p in mine],
                    mode="markers",
                    marker={"symbol": symbol, "size": 9, "color": color},
                    name="drawn architectures" if source == "drawn" else "references",
                    legendgroup=source,
                    showlegend=k == 0,
                    text=[p["architecture"] for p in mine],
                    hovertemplate="%{text}<br>short %{x:.2f}%<br>long %{y:.2f}%<extra></extra>",
                ),
                row=r + 1,
                col=c + 1,
            )
        fig.update_xaxes(title_text="short: val acc (%)", row=r + 1, col=c + 1)
        fig.update_yaxes(title_text="long: val acc (%)" if c == 0 else None, row=r + 1, col=c + 1)
    long = result["long"]
    ceiling = long["ceiling_spearman"]
    fig.update_layout(
        title={
            "text": f"{plan.name}: does the short training rank architectures as the long one "
            f"does?<br><sup>{result['architectures']} architectures; long: {long['epochs']} "
            f"epochs, mean of {long['seeds']} seeds; its seed-to-seed rho (the ceiling) "
            + ("n/a" if ceiling is None else f"{ceiling:.2f}")
            + "</sup>"
        },
        height=360 * lines + 120,
        width=1100,
        template="plotly_white",
    )
    return fig


def _pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def readme(plan: Plan, result: Mapping[str, Any], record: Mapping[str, Any], notes: str) -> str:
    long = result["long"]

    def num(x: Any, digits: int = 2) -> str:
        return "n/a" if x is None else f"{x:.{digits}f}"

    lines = [f"# Fidelity {plan.name}", ""]
    if plan.config.description:
        lines += [plan.config.description.strip(), ""]
    lines += [
        f"{result['architectures']} architectures ({plan.config.architectures} drawn at random "
        f"from space `{plan.space.name}` within {format_count(plan.budget)} parameters"
        + (f" and {format_count(plan.max_macs)} MACs" if plan.max_macs else "")
        + f", plus {', '.join(p.stem for p in plan.references) or 'no references'}), every one "
        + (
            "trained with the standard recipe (crop 4, flip, label smoothing 0.1)"
            if plan.config.recipe == "standard"
            else "trained with its own recipe"
        )
        + f" and scored on {plan.data.val_size or 'the default number of'} validation images "
        "(never the test split). The long setting: "
        f"{long['epochs']} epochs, {long['seeds']} seeds; its accuracies span "
        + (
            f"{100 * long['accuracy_range'][0]:.1f}-{100 * long['accuracy_range'][1]:.1f}%"
            if long["accuracy_range"]
            else "n/a"
        )
        + f", seed-to-seed spread {num(_pct(long['seed_spread']))} "
        "points (mean standard deviation). Its seed-to-seed Spearman rho, "
        f"**{num(long['ceiling_spearman'])}**, is the ceiling: one long training agrees with "
        "another that well, and each short setting below is weighed the same way, against one "
        "long training at a time (the mean over the seeds). Against the mean of the long "
        "seeds, which is less noisy, a short setting can score higher (last column).",
        "",
        "| setting | compute (epochs of the full model) | Spearman rho | 90% interval | "
        "Kendall tau | top-5 overlap | rho against the long mean |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for s in result["short"]:
        interval = s["spearman_interval"]
        name = f"**{s['name']}** (the search's)" if s["name"] == result["default"] else s["name"]
        lines.append(
            f"| {name} | {num(s['cost_epochs'], 1)} | {num(s['spearman'])} | "
            + (f"{num(interval[0])} to {num(interval[1])}" if interval else "n/a")
            + f" | {num(s['kendall'])} | "
            + ("n/a" if s["top5_overlap"] is None else f"{s['top5_overlap']:g}/{TOP}")
            + f" | {num(s.get('spearman_vs_mean'))} |"
        )
    lines.append(
        f"| long, seed against seed (ceiling) | {long['epochs']} | "
        f"{num(long['ceiling_spearman'])} | | {num(long['ceiling_kendall'])} | "
        + (
            "n/a"
            if long["ceiling_top5_overlap"] is None
            else f"{long['ceiling_top5_overlap']:g}/{TOP}"
        )
        + " | |"
    )
    lines += [
        "",
        "A setting `name@E` is the schedule `name` read after epoch E of it (the search's trial "
        "read where Hyperband reads it). Compute counts the epochs trained until the read, each "
        "weighed by the share of the full model's multiply-accumulates per image that the "
        "setting's model has (a cheaper model on smaller images or narrower costs less). "
        f"The interval is the central {INTERVAL:.0%} of rho over {BOOTSTRAP} resamples of the "
        "architectures.",
    ]
    if (plan.out / "fidelity.png").exists():
        lines += ["", "![short against long validation accuracy](fidelity.png)"]
    lines += [
        "",
        "## Reproduce",
        "",
        "    mkdir -p data && tar xzf ../shared/data/cifar10-jpeg.tar.gz -C data"
        if "cifar10-jpeg" in str(plan.data.source)
        else "",
        f"    {record['command']}",
        "",
        f"The preset as run is `fidelity.toml`; the run folders are in `{record['work']}/` (the "
        "same command resumes a killed measurement; `--summarize` rewrites this folder).",
        "",
        "## Machine, versions, time",
        "",
        f"- machine: {'; '.join(record['machines'])}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()),
        f"- wall time: {record['wall_seconds'] / 60:.1f} min in {record['sessions']} session(s)"
        + (f", concurrency {plan.config.concurrency}" if plan.config.concurrency > 1 else ""),
        f"- written {record['written']} by `python -m search.fidelity`",
    ]
    if notes.strip():
        lines += ["", notes.strip()]
    return "\n".join(line for line in lines) + "\n"


# -- the command ----------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m search.fidelity",
        description="Measure how well short trainings rank architectures for a long one "
        "(Spearman, Kendall, top-5 overlap, compute). Running it again continues where it "
        "stopped.",
    )
    p.add_argument("--config", type=Path, required=True, help="fidelity preset (TOML)")
    p.add_argument("--data", help="override [data] source (the same images at another path)")
    p.add_argument("--device", help="override [fidelity] device: auto, cpu, cuda, cuda:N")
    p.add_argument("--concurrency", type=int, help="override [fidelity] concurrency")
    p.add_argument("--results", type=Path, default=Path("results"), help="default results")
    p.add_argument("--out", type=Path, help="result folder (default results/reference/<name>)")
    p.add_argument("--summarize", action="store_true", help="train nothing: write the result")
    p.add_argument("--no-progress", action="store_true", help="log lines only, no bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except Exception as exc:  # a full disk: one line; anything else is a bug of ours
        full = disk_full_message(exc, "the measurement's folders")
        if full is None:
            raise
        print(
            f"error: {full}; finished runs are kept: free some space and run it again",
            file=sys.stderr,
        )
        return 1


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    progress = not args.no_progress
    try:
        if args.concurrency is not None and args.concurrency < 1:
            raise UserError(f"--concurrency must be >= 1, but got {args.concurrency}")
        plan = load_plan(
            args.config,
            data=args.data,
            device=args.device,
            concurrency=args.concurrency,
            results=args.results,
            out=args.out,
        )
        device = resolve_device(plan.config.device)
        check_writable_folder(plan.work)
        check_writable_folder(plan.out)
        recorded = _recorded(plan)
        if args.summarize and recorded is None:
            raise UserError(
                f"--summarize: nothing to summarize, {plan.work}/plan.json does not exist (run "
                f"the measurement first; {plan.out}/ is left as it is)"
            )
        decoded = decode(plan.data.source, image_size=plan.data.image_size, progress=progress)
        dataset = split(
            decoded, val_size=plan.data.val_size, subset=plan.data.subset, seed=plan.data.split_seed
        )
        full_size = dataset.image_size[0]
        archs = draw_architectures(
            plan, num_classes=dataset.num_classes, image_size=dataset.image_size
        )
        wanted = {
            "settings": plan.record(),
            "architectures": [
                {"name": a.name, "source": a.source, "genotype": a.genotype.to_dict()}
                for a in archs
            ],
        }
        if recorded is not None and recorded != wanted:
            from search.config import first_difference

            key, there, now = first_difference(recorded, wanted)
            raise UserError(
                f"{plan.work} holds a measurement with other settings ({key}: {there!r} there, "
                f"{now!r} now); run it with its own preset, or give it another [fidelity] name"
            )
        jobs = jobs_of(plan, archs, full_size)
        check_jobs([j for j, _, _ in jobs])
        lowres = {s.image_size for s in plan.shorts if s.image_size not in (None, full_size)}
        decoded_small = {
            size: decode(plan.data.source, image_size=size, progress=progress)
            for size in sorted(lowres)
        }
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted before the measurement started: nothing was written", file=sys.stderr)
        return 130

    plan.work.mkdir(parents=True, exist_ok=True)
    save_cache(decoded)
    for small in decoded_small.values():
        save_cache(small)
    write_json_atomic(plan.work / "plan.json", wanted)
    configure_torch(device)
    loaded = {plan.data: dataset}
    for size, small in decoded_small.items():
        config = dataclasses.replace(plan.data, image_size=size)
        loaded[config] = split(
            small, val_size=config.val_size, subset=config.subset, seed=config.split_seed
        )
    log = Log.open(plan.work / "log.json")
    code = 0
    if not args.summarize:
        log.machine = provenance.machine(plan.config.device)
        log.start()
        print(
            f"fidelity {plan.name}: {len(archs)} architectures x "
            f"{1 + len(plan.shorts)} settings = {len(jobs)} trainings on {device}, "
            f"{plan.config.concurrency} at a time"
        )
        print(f"data     {dataset.describe()}")
        started = time.time()
        try:
            with log.running("train", plan.name):
                run_jobs(
                    [j for j, _, _ in jobs],
                    datasets=DatasetCache(loaded),
                    device=device,
                    concurrency=plan.config.concurrency,
                    progress=progress,
                    desc="fidelity",
                )
        except KeyboardInterrupt:
            code = 130
        log.stage("train", plan.name, time.time() - started, code)
    outcomes = _collect(jobs)
    result = write_result(plan, archs, outcomes, loaded, log, args)
    print_lines(result)
    if code == 130:
        print("interrupted: run the same command again to continue", file=sys.stderr)
    return code


def _recorded(plan: Plan) -> dict[str, Any] | None:
    try:
        return json.loads((plan.work / "plan.json").read_text())
    except (OSError, ValueError):
        return None


def _collect(jobs: Sequence[tuple[Job, str, Arch]]) -> dict[tuple[str, str], list[Outcome]]:
    """The outcome of every job whose run finished (read from its folder), by (arch, setting)."""
    from search.jobs import finished_metrics

    out: dict[tuple[str, str], list[Outcome]] = {}
    for job, setting, arch in jobs:
        metrics = finished_metrics(job)
        out.setdefault((arch.name, setting), []).append(Outcome(job, metrics))
    return out


def write_result(
    plan: Plan,
    archs: Sequence[Arch],
    outcomes: Mapping[tuple[str, str], list[Outcome]],
    loaded: Mapping[DataConfig, Any],
    log: Log,
    args: Any,
) -> dict[str, Any]:
    """Write ``results/reference/<name>/`` from whatever finished; returns fidelity.json."""
    import pandas as pd

    dataset = loaded[plan.data]
    classes, channels = dataset.num_classes, dataset.in_channels
    full_size = dataset.image_size[0]
    sizes, costs = {}, {}
    for arch in archs:
        params, macs = count(
            arch.genotype, num_classes=classes, in_channels=channels, image_size=dataset.image_size
        )
        sizes[arch.name] = (params, macs)
        for setting in plan.shorts:
            side = setting.image_size or full_size
            _, small = count(
                variant(arch.genotype, setting, full_size),
                num_classes=classes,
                in_channels=channels,
                image_size=side,
            )
            costs[(arch.name, setting.name)] = small / macs
    result = analyse(plan, archs, outcomes, costs=costs)
    rows = rows_of(plan, archs, outcomes, costs, sizes)
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": _command(args),
        "work": str(plan.work),
        "machines": sorted({s.get("machine", "") for s in log.sessions} - {""})
        or [provenance.machine(plan.config.device)],
        "versions": provenance.versions(),
        "written": provenance.now(),
        "wall_seconds": log.seconds(),
        "sessions": len(log.sessions),
    }
    result = {**result, "record": record}
    write_json_atomic(out / "fidelity.json", result)
    write_text_atomic(out / "fidelity.csv", pd.DataFrame(rows).to_csv(index=False))
    write_text_atomic(out / "fidelity.toml", plan.preset.read_text())
    (out / "fidelity.png").unlink(missing_ok=True)
    if any(s["spearman"] is not None for s in result["short"]):
        from search.report import write_png

        fig = figure(plan, result, rows)
        write_text_atomic(
            out / "fidelity.html", fig.to_html(include_plotlyjs="cdn", full_html=True)
        )
        _, no_png = write_png({"fidelity": fig}, out)
        if no_png:
            print(no_png)
    notes_path = out / "NOTES.md"
    notes = notes_path.read_text() if notes_path.is_file() else ""
    write_text_atomic(out / "README.md", readme(plan, result, record, notes))
    return result


def _command(args: Any) -> str:
    words = ["python -m search.fidelity", "--config", str(args.config)]
    if args.data:
        words += ["--data", args.data]
    if args.concurrency:
        words += ["--concurrency", str(args.concurrency)]
    if args.device:
        words += ["--device", args.device]
    return " ".join(words)


def print_lines(result: Mapping[str, Any]) -> None:
    """A line per setting: compute, rho with its interval, tau, top-5 overlap."""
    long = result["long"]

    def num(x: Any) -> str:
        return "  n/a" if x is None else f"{x:5.2f}"

    print(
        f"\n{result['architectures']} architectures finished the long setting "
        f"({long['epochs']} epochs, {long['seeds']} seeds)"
    )
    print(f"{'setting':<18} {'epochs':>6} {'rho':>5} {'interval':>13} {'tau':>5} top-{TOP}")
    for s in result["short"]:
        interval = s["spearman_interval"]
        shown = f"[{num(interval[0])},{num(interval[1])}]" if interval else " " * 13
        mark = "  <- the search's" if s["name"] == result["default"] else ""
        overlap = "n/a" if s["top5_overlap"] is None else f"{s['top5_overlap']:g}/{TOP}"
        cost = "  n/a" if s["cost_epochs"] is None else f"{s['cost_epochs']:6.1f}"
        print(
            f"{s['name']:<18} {cost} {num(s['spearman'])} {shown} {num(s['kendall'])} "
            f"{overlap}{mark}"
        )
    print(
        f"{'long (ceiling)':<18} {long['epochs']:6.1f} {num(long['ceiling_spearman'])} "
        f"{'':13} {num(long['ceiling_kendall'])} "
        + (
            "n/a"
            if long["ceiling_top5_overlap"] is None
            else f"{long['ceiling_top5_overlap']:g}/{TOP}"
        )
    )


if __name__ == "__main__":
    sys.exit(main())
