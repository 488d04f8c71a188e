"""The budget-constrained Optuna study: settings, the objective, the worker loop and resume.

One single-objective study maximises validation accuracy (Optuna cannot prune multi-objective
studies; the accuracy-vs-parameters front is drawn from the trials afterwards). The parameter
budget is a constraint (``trial.set_constraint``): a candidate over budget is pruned before any
weight exists, and TPE ranks it among the infeasible trials by its excess. Each trial trains for
at most ``train.epochs`` epochs, reports validation accuracy after every epoch, and Hyperband
stops the unpromising ones.

Workers claim trials under a lock shared across processes and machines, so the study ends with
exactly ``trials`` trials (complete, pruned or rejected), however many workers run and however
often they are killed. A trial left RUNNING by a dead process is failed and retried once: at once
when its worker ran on this machine (its pid is gone), else after its heartbeat (RDB storages)
has been silent for the grace period.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

import search
from search import provenance
from search.augment import Normalization
from search.config import DataConfig, first_difference
from search.data import Dataset
from search.storage import ClaimLock
from search.training import EpochStats, TrainConfig, TrainingDiverged, fit
from space import Augment, BudgetCheck, build, count, format_count, parse_budget
from space._io import check_path
from space.errors import UserError
from space.searchspace import SearchSpace, sample

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SAMPLERS = ("tpe", "random", "nsga2", "gp")
# The recipe every reference file carries (configs/reference/*.toml): pad-4 crop, flip and label
# smoothing 0.1. By default every trial trains with it, so that trials compare architectures.
STANDARD_RECIPE = Augment(crop_padding=4, flip=True, label_smoothing=0.1)
RECIPES = ("standard", "joint")
RACE_LENGTH = 2  # the race's default length, in trial lengths (see search.fidelity's result)
# Trials that count toward the study's total. A WAITING trial (a queued retry) counts once it
# runs: ``study.optimize`` takes a waiting trial before it draws a new one.
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
MAX_CONSECUTIVE_FAILURES = 3  # a worker whose trials keep failing stops instead of looping
# A study name becomes file names (<name>.db, <name>.journal.torn-<time>) and a folder; this
# leaves room below the usual 255-byte limit of a name.
MAX_STUDY_NAME = 120

# Set by the entry point's Ctrl-C handler, which raises nothing itself: an exception raised
# asynchronously can land inside a database write (leaving SQLite locked for every later write)
# or in a finalizer (where Python drops it). The worker checks the flag instead, at places
# where nothing is half done: before every claim, at the start of a trial and at every step.
STOP = threading.Event()


def stop_if_asked() -> None:
    if STOP.is_set():
        raise KeyboardInterrupt


class SearchConfigError(UserError, ValueError):
    """A search setting out of its range."""


@dataclass(frozen=True)
class SearchConfig:
    """How to search; ``[search]`` in a preset, flags of ``python -m search.run``."""

    budget: str | float = "5M"  # parameter budget: 400k, 400_000, 4e5, 5M, 5e6
    # A compute budget beside it: multiply-accumulates per image (300M, 1G); None = no limit.
    max_macs: str | float | None = None
    trials: int = 100  # total trials of the study, counting earlier runs (rejects included)
    timeout: float | None = None  # seconds after which this run starts no new trial
    space: str = "default"  # search-space preset: a name in configs/space/ or a TOML path
    storage: str | None = None  # default sqlite:///<results>/<study>.db
    study_name: str | None = None  # default <dataset>-<budget>, e.g. cifar10-400k
    seed: int = 0  # seeds the sampler, the validation split and every trial's training
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    workers: int = 1  # processes on this machine, each on one GPU (round robin) when GPUs exist
    results: str = "results"  # folder of the default storage and of reports
    min_epochs: int = 1  # Hyperband: the fewest epochs a trial runs before it can be pruned
    reduction_factor: int = 3  # Hyperband: keep about 1 in this many at each rung
    startup_trials: int = 10  # random trials before TPE models the space, over all brackets
    eval_every_epoch: bool = False  # whole learning curves: validate after every epoch, not only
    # at Hyperband's rungs and the last epoch (costs one validation pass per extra epoch)
    cudnn_benchmark: bool = True  # cuDNN autotuning per network (CUDA); see configure_torch
    heartbeat: int = 30  # seconds between heartbeats of a running trial (RDB storages)
    grace: int = 120  # seconds of silence after which another worker fails and retries it
    # How the trials train. "standard": every candidate with the references' standard recipe
    # (crop 4, flip, label smoothing 0.1), so that validation accuracy compares architectures,
    # and the space's augmentation choices are searched afterwards for the chosen one (the
    # recipe stage); a path to an architecture file: its [augment] recipe, the same way;
    # "joint": the recipe is drawn with each architecture. None: the recipe of the study being
    # resumed (one made before this setting existed: joint), else "standard".
    recipe: str | None = None
    sampler: str = "tpe"  # tpe, random, nsga2 (a genetic search) or gp (needs scipy)
    # The budget's hand-designed networks (names in configs/reference/ or TOML paths): enqueued
    # as the first trials where the space expresses them, else trained beside as yardsticks.
    # None: every file in configs/reference/ filling half to all of the budget (within max_macs).
    references: tuple[str, ...] | None = None
    race_top: int = 6  # distinct leaders raced (with the best reference) after the trials; 0: none
    race_seeds: int = 2  # seeds of every race entry
    race_epochs: int | None = None  # the race's length; None: RACE_LENGTH times the trial's
    recipe_trials: int = 8  # recipes tried for the chosen network (not in joint mode); 0: none
    recipe_epochs: int | None = None  # the recipe stage's length; None: the race's
    # Trainings at once in the stages beside the trials (yardsticks, race, recipe stage), each
    # in a process of its own: per GPU on CUDA (with mps, under NVIDIA's Multi-Process Service).
    concurrency: int = 1
    mps: bool = False

    def __post_init__(self) -> None:
        parse_budget(self.budget)
        if self.max_macs is not None:
            parse_macs(self.max_macs)
        for name in ("trials", "workers", "min_epochs", "heartbeat", "grace"):
            value = getattr(self, name)
            if value < 1:
                raise SearchConfigError(f"{name} must be an integer >= 1, but got {value!r}")
        if self.trials > 1_000_000:
            raise SearchConfigError(f"trials must be at most 1000000, but got {self.trials}")
        if self.reduction_factor < 2:
            raise SearchConfigError(
                f"reduction_factor must be an integer >= 2, but got {self.reduction_factor!r}"
            )
        if not 0 <= self.seed < 2**62:  # trial n trains with seed + n
            raise SearchConfigError(f"seed must be an integer in [0, 2**62), but got {self.seed!r}")
        if self.startup_trials < 0:
            raise SearchConfigError(f"startup_trials must be >= 0, but got {self.startup_trials!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise SearchConfigError(f"timeout must be > 0 seconds, but got {self.timeout!r}")
        if self.grace <= self.heartbeat:
            raise SearchConfigError(
                f"grace ({self.grace} s) must be longer than heartbeat ({self.heartbeat} s)"
            )
        if self.sampler not in SAMPLERS:
            raise SearchConfigError(
                f"sampler must be one of {', '.join(SAMPLERS)}, but got {self.sampler!r}"
            )
        if self.concurrency < 1:
            raise SearchConfigError(
                f"concurrency must be an integer >= 1, but got {self.concurrency!r}"
            )
        for name in ("race_top", "recipe_trials"):
            if getattr(self, name) < 0:
                raise SearchConfigError(
                    f"{name} must be an integer >= 0, but got {getattr(self, name)!r}"
                )
        for name in ("race_seeds", "race_epochs", "recipe_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SearchConfigError(f"{name} must be an integer >= 1, but got {value!r}")
        if (
            self.recipe is not None
            and self.recipe not in RECIPES
            and not self.recipe.endswith(".toml")
        ):
            raise SearchConfigError(
                f"recipe must be {' or '.join(repr(r) for r in RECIPES)} or an architecture "
                f"file (.toml) whose [augment] recipe every trial trains with, but got "
                f"{self.recipe!r}"
            )
        if self.study_name is not None and not is_name(self.study_name):
            raise SearchConfigError(
                "study_name must be letters, digits, '.', '_' or '-' (it names files), "
                f"but got {self.study_name!r}"
            )
        if self.study_name is not None and len(self.study_name) > MAX_STUDY_NAME:
            raise SearchConfigError(
                f"study_name must be at most {MAX_STUDY_NAME} characters (it names files and "
                f"folders), but got {len(self.study_name)}: {self.study_name[:40]!r}..."
            )

    @property
    def budget_params(self) -> int:
        return parse_budget(self.budget)

    @property
    def budget_macs(self) -> int | None:
        return None if self.max_macs is None else parse_macs(self.max_macs)


def parse_macs(text: str | int | float) -> int:
    """``'300M'``, ``'1G'``, ``'5e8'`` -> multiply-accumulates per image."""
    try:
        return parse_budget(text)
    except UserError:
        raise SearchConfigError(
            f"max_macs must be a whole number of multiply-accumulates per image such as 300M, "
            f"1G or 5e8, but got {text!r}"
        ) from None


def is_name(text: str) -> bool:
    """Whether ``text`` can name a study and its files: letters, digits, '.', '_', '-'."""
    return bool(text) and all(c.isalnum() or c in "._-" for c in text) and text[0] not in ".-"


def budget_label(budget: int) -> str:
    """400000 -> '400k', 5000000 -> '5m', 1234567 -> '1234567'."""
    for suffix, size in (("g", 10**9), ("m", 10**6), ("k", 10**3)):
        if budget % size == 0:
            return f"{budget // size}{suffix}"
    return str(budget)


def dataset_label(source: str) -> str:
    """The name a study gets from its data: cifar10, or a folder/tarball's name."""
    if source.lower() in ("cifar10", "cifar100"):
        return source.lower()
    name = Path(source).expanduser().name.split(".")[0] or "data"
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in name)


def resolve_space(name: str) -> Path:
    """A preset name (``default``) in configs/space/, or a path to a TOML file."""
    check_path(Path(name), what=f"--space {name[:80]!r}")
    path = Path(name)
    if path.suffix != ".toml":
        candidate = CONFIGS / "space" / f"{name}.toml"
        if not candidate.exists():
            names = sorted(p.stem for p in (CONFIGS / "space").glob("*.toml"))
            raise UserError(
                f"search space {name!r}: no such preset (presets: {', '.join(names)}; "
                "or give a path to a .toml file)"
            )
        return candidate
    return path


# -- the study's record ---------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSettings:
    """What a study is about; it must not change when a study is resumed."""

    budget: int
    space: SearchSpace
    data: DataConfig
    dataset: dict[str, Any]  # the data's fingerprint (see ``fingerprint``)
    train: TrainConfig
    min_epochs: int
    reduction_factor: int
    max_macs: int | None = None  # multiply-accumulates per image; None = no compute budget
    recipe: Augment | None = None  # the one recipe every trial trains with; None = joint

    def record(self) -> dict[str, Any]:
        # The data is compared by content, not by path: machines sharing a study may keep the
        # same images in different places, or name the folder differently.
        data = {k: v for k, v in dataclasses.asdict(self.data).items() if k != "source"}
        return {
            "budget": self.budget,
            # Recorded only when set, so that a study made before it existed still resumes.
            **({"max_macs": self.max_macs} if self.max_macs is not None else {}),
            **({"recipe": dataclasses.asdict(self.recipe)} if self.recipe is not None else {}),
            "space": self.space.to_dict(),
            "data": data,
            "dataset": self.dataset,
            "train": self.train.to_dict(),
            "pruner": {
                "kind": "hyperband",
                "min_epochs": self.min_epochs,
                "max_epochs": self.train.epochs,
                "reduction_factor": self.reduction_factor,
            },
        }


def fingerprint(dataset: Dataset) -> dict[str, Any]:
    """What identifies the data a study ranks on: classes, split sizes, image shape and pixel
    statistics (rounded: two decodes of the same files agree to far more digits)."""
    return {
        "classes": list(dataset.classes),
        "image_size": list(dataset.image_size),
        "in_channels": dataset.in_channels,
        "train_images": len(dataset.train),
        "val_images": len(dataset.val) if dataset.val is not None else 0,
        "test_images": len(dataset.test),
        "mean": [round(m, 4) for m in dataset.mean],
        "std": [round(s, 4) for s in dataset.std],
    }


def describe_dataset(dataset: Dataset) -> dict[str, Any]:
    return {
        "name": dataset.name,
        "source": provenance.portable_path(dataset.source),  # retrain reads it: provenance.locate
        "classes": list(dataset.classes),
        "num_classes": dataset.num_classes,
        "in_channels": dataset.in_channels,
        "image_size": list(dataset.image_size),
        "train_images": len(dataset.train),
        "val_images": len(dataset.val) if dataset.val is not None else 0,
        "test_images": len(dataset.test),
        "mean": list(dataset.mean),
        "std": list(dataset.std),
    }


def resolve_recipe(value: str | None, recorded: dict[str, Any] | None) -> Augment | None:
    """The one recipe every trial trains with, None for a joint search: ``value`` as
    ``SearchConfig.recipe`` says, and with None the recipe of the study being resumed (a study
    recorded before the setting existed searched jointly), else the standard one."""
    if value is None:
        if recorded is None:
            return STANDARD_RECIPE
        raw = recorded.get("recipe")
        return Augment(**raw) if isinstance(raw, dict) else None
    if value == "joint":
        return None
    if value == "standard":
        return STANDARD_RECIPE
    check_path(Path(value), what=f"recipe {value[:80]!r}")
    if not Path(value).is_file():
        raise UserError(
            f"recipe {value!r}: no such file (expected 'standard', 'joint' or an architecture "
            "file whose [augment] table is the recipe)"
        )
    from space import Genotype

    augment = Genotype.load(value).augment
    if augment.auto != "randaugment":  # the magnitude only RandAugment reads, as drawn ones have it
        augment = dataclasses.replace(augment, auto_magnitude=9)
    return augment


def recorded_settings(
    storage: optuna.storages.BaseStorage | None, name: str
) -> dict[str, Any] | None:
    """The settings study ``name`` recorded (``SearchSettings.record``), read without writing;
    None when there is no such storage or study yet."""
    if storage is None or name not in optuna.study.get_all_study_names(storage):
        return None
    study_id = storage.get_study_id_from_name(name)
    return storage.get_study_user_attrs(study_id).get("settings")


def open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    settings: SearchSettings,
    dataset: Dataset,
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> optuna.Study:
    """Create the study, or load it and check it was made with the same settings.

    An existing study is loaded, not created again: Optuna's ``create_study(load_if_exists)``
    writes a record into a journal even when the study exists, and a refused resume must leave
    the storage as it was.
    """
    pruner = optuna.pruners.HyperbandPruner(
        min_resource=settings.min_epochs,
        max_resource=settings.train.epochs,
        reduction_factor=settings.reduction_factor,
    )
    if name in optuna.study.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    else:  # two processes may get here at once: the second loads what the first created
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction="maximize",
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    recorded = _with_new_defaults(study.user_attrs.get("settings"))
    wanted = settings.record()
    if recorded is None:
        study.set_user_attr("settings", wanted)
        study.set_user_attr("budget", settings.budget)
        study.set_user_attr("dataset", describe_dataset(dataset))
        study.set_user_attr("space_name", settings.space.name)
        study.set_user_attr("version", search.__version__)
        study.set_user_attr("versions", provenance.versions())
        study.set_user_attr("created", provenance.now())
        study.set_user_attr("command", provenance.command_line())
    elif recorded != wanted:
        key, there, now = first_difference(recorded, wanted)
        raise UserError(
            f"study {name!r} was made with other settings ({key}: {there!r} in the study, "
            f"{now!r} now); run it with its own settings to resume it, or pass another "
            "--study-name"
        )
    return study


def _with_new_defaults(recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """A study's recorded settings, with the training settings added since it was made at their
    defaults (which is what its trials ran with), so that it still resumes."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("train"), dict):
        return recorded
    return {**recorded, "train": TrainConfig.with_new_defaults(recorded["train"])}


def host_salt() -> int:
    """A number of this machine's name, so machines starting together draw different trials."""
    return zlib.crc32(provenance.host().encode()) * 104_729


def make_sampler(
    config: SearchConfig, *, existing: int, worker: int
) -> optuna.samplers.BaseSampler:
    """The sampler ``config.sampler`` names. The seed also depends on how many trials exist,
    which worker asks and on which machine, so a resumed run or another worker does not repeat
    the first one's random start.

    - ``tpe``: multivariate over the dynamic (per-stage) space, grouped, with constant liar for
      parallel workers. The first ``startup_trials`` trials of the study are random, whatever
      Hyperband bracket they land in: Optuna's bracket view of the study filters ``get_trials``
      for the pruner, but TPE reads ``_get_trials`` and so counts and models every trial.
    - ``random``: every choice drawn uniformly: the baseline any other must beat.
    - ``nsga2``: a genetic search (NSGA-II on one objective: tournament selection, uniform
      crossover, mutation), generations of ``startup_trials`` trials (at least 4); it reads the
      trials' constraints, so an over-budget parent is never preferred.
    - ``gp``: Gaussian-process Bayesian optimisation (needs scipy); it models the choices that
      every trial has, and draws the per-stage ones at random.
    """
    seed = (config.seed * 1_000_003 + existing * 7919 + worker + host_salt()) % 2**32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if config.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if config.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(
                seed=seed, population_size=max(4, config.startup_trials)
            )
        if config.sampler == "gp":
            return optuna.samplers.GPSampler(
                seed=seed,
                n_startup_trials=config.startup_trials,
                deterministic_objective=False,
                warn_independent_sampling=False,
            )
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=config.startup_trials,
            multivariate=True,
            group=True,
            constant_liar=True,
        )


def check_sampler(name: str) -> None:
    """Refuse a sampler this machine cannot run, before anything starts."""
    if name == "gp":
        try:
            import scipy  # noqa: F401
        except ImportError:
            raise SearchConfigError(
                "sampler 'gp' needs scipy, which is not installed: pip install scipy (or use "
                "tpe, random or nsga2)"
            ) from None


# -- one trial -------------------------------------------------------------------------------


@dataclass
class Context:
    """What every trial of a worker needs."""

    study: optuna.Study
    settings: SearchSettings
    dataset: Dataset  # train and val already on the device
    device: torch.device
    seed: int
    progress: bool = False
    eval_every_epoch: bool = False  # validation after every epoch, not only at Hyperband's rungs


def objective(trial: optuna.Trial, ctx: Context) -> float:
    """Draw a candidate, reject it if over budget, reuse a duplicate, else train and report."""
    ds, budget, max_macs = ctx.dataset, ctx.settings.budget, ctx.settings.max_macs
    drawn = sample(
        trial,
        ctx.settings.space,
        budget=budget,
        num_classes=ds.num_classes,
        in_channels=ds.in_channels,
        max_macs=max_macs,
        image_size=ds.image_size,
    )
    g = drawn.genotype
    params, macs = count(
        g, num_classes=ds.num_classes, in_channels=ds.in_channels, image_size=ds.image_size
    )
    verdict = BudgetCheck(params, budget)
    trial.set_user_attr("genotype", g.to_dict())
    trial.set_user_attr("key", g.key())
    trial.set_user_attr("params", params)
    trial.set_user_attr("macs", macs)
    trial.set_user_attr("budget_share", verdict.fraction)
    with warnings.catch_warnings():  # a retry already holds its (identical) constraints
        warnings.filterwarnings("ignore", message="The constraint value is ignored")
        trial.set_constraint("params_over_budget", params - budget)  # feasible when <= 0
        if max_macs is not None:
            trial.set_constraint("macs_over_budget", macs - max_macs)
    over = verdict.message() if not verdict.fits else None
    if over is None and max_macs is not None and macs > max_macs:
        over = (
            f"{macs:,} MACs > MACs budget {max_macs:,} "
            f"(over by {macs - max_macs:,}, {macs / max_macs - 1:.1%})"
        )
    if over is not None:
        # No weight was allocated and no step trained; TPE learns from the excess.
        trial.set_user_attr("status", f"rejected: {over}")
        raise optuna.TrialPruned(over)

    twin = find_twin(ctx.study, trial.number, g.key())
    if twin is not None:
        # Nothing is trained and no training time is claimed; plots show the twin.
        trial.set_user_attr("duplicate_of", twin.number)
        if twin.state == TrialState.PRUNED:
            trial.set_user_attr("status", f"pruned: same genotype as trial {twin.number}")
            raise optuna.TrialPruned(f"same genotype as pruned trial {twin.number}")
        trial.set_user_attr("status", f"complete: same genotype as trial {twin.number}")
        return float(twin.value)  # type: ignore[arg-type]

    train = dataclasses.replace(ctx.settings.train, seed=ctx.seed + trial.number)
    trial.set_user_attr("device", provenance.device_name(ctx.device))
    reference = "reference" in trial.user_attrs
    epochs: list[EpochStats] = []
    # Validation runs where Hyperband reads it (its rungs, and the last epoch), unless the
    # search asks for whole learning curves; the accuracies are the trial's intermediate values.
    rungs = rung_epochs(ctx.settings.min_epochs, train.epochs, ctx.settings.reduction_factor)

    def on_epoch(stats: EpochStats) -> None:
        stop_if_asked()
        epochs.append(stats)
        if stats.eval_acc is None:
            return
        trial.report(stats.eval_acc, stats.epoch)
        # The last epoch is never pruned: the trial's training is done by then, and Optuna's
        # Hyperband has a rung there that would throw a fully trained result away. A reference
        # is never pruned: it is the yardstick the searched networks are weighed against.
        if stats.epoch < train.epochs and not reference and trial.should_prune():
            raise optuna.TrialPruned(f"pruned by Hyperband after epoch {stats.epoch}")

    torch.manual_seed(train.seed)
    model = build(g, num_classes=ds.num_classes, in_channels=ds.in_channels)
    # How the training ended, as text only: an exception's traceback holds fit's frame, and with
    # it the model, its gradients and the optimizer state. Raised again below, after the model
    # is let go, so a pruned or failed trial frees its memory at once (not at the next garbage
    # collection), which matters when workers share a GPU.
    pruned = out_of_memory = None
    try:
        fit(
            model,
            ds.train,
            augment=g.augment,
            normalization=Normalization(ds.mean, ds.std),
            num_classes=ds.num_classes,
            config=train,
            device=ctx.device,
            eval_set=ds.val,
            eval_epochs=None if ctx.eval_every_epoch else rungs,
            on_epoch=on_epoch,
            progress=ctx.progress,
            desc=f"trial {trial.number}",
            stop=STOP,
        )
    except optuna.TrialPruned as exc:
        pruned = str(exc)
    except TrainingDiverged as exc:
        pruned = f"diverged: {exc}"
    except torch.cuda.OutOfMemoryError as exc:
        lines = str(exc).strip().splitlines()
        out_of_memory = lines[0] if lines else "out of memory"
    finally:
        trial.set_user_attr("epochs_run", len(epochs))
        trial.set_user_attr("train_seconds", sum(e.seconds for e in epochs))
        trial.set_user_attr("train_loss", [e.train_loss for e in epochs])
        if epochs:
            trial.set_user_attr("images_per_s", sum(e.images_per_s for e in epochs) / len(epochs))
    del model
    if ctx.device.type == "cuda":  # give the freed blocks back: other workers may share the GPU
        torch.cuda.empty_cache()
    if out_of_memory is not None:
        trial.set_user_attr("status", f"failed: CUDA out of memory ({out_of_memory[:200]})")
        raise torch.cuda.OutOfMemoryError(out_of_memory)  # Optuna marks the trial failed
    if pruned is not None:
        trial.set_user_attr("status", f"pruned: {pruned}")
        raise optuna.TrialPruned(pruned)
    trial.set_user_attr("status", f"complete: {len(epochs)} epochs")
    return epochs[-1].eval_acc  # type: ignore[return-value]


def rung_epochs(min_epochs: int, max_epochs: int, reduction_factor: int) -> frozenset[int]:
    """The epochs at which Optuna's HyperbandPruner reads a trial's accuracy, and the last one.

    Bracket s is successive halving with rungs at ``min_epochs * reduction_factor ** (s + k)``
    (Optuna's ``min_early_stopping_rate`` = s), so over all brackets the rungs are the powers
    ``min_epochs * reduction_factor ** j``: the same set whichever bracket a trial lands in.
    """
    rungs = {max_epochs}
    epoch = min_epochs
    while epoch < max_epochs:
        rungs.add(epoch)
        epoch *= reduction_factor
    return frozenset(rungs)


def learning_curve(t: FrozenTrial) -> list[tuple[int, float]]:
    """(epoch, validation accuracy) of every epoch at which the trial was evaluated: its
    intermediate values; trials recorded before that also kept a per-epoch ``curve``."""
    if t.intermediate_values:
        return sorted((int(k), float(v)) for k, v in t.intermediate_values.items())
    curve = t.user_attrs.get("curve") or []
    return [(i, float(a)) for i, a in enumerate(curve, start=1) if a is not None]


def is_rejected(t: FrozenTrial) -> bool:
    """Over budget: pruned before any training."""
    return str(t.user_attrs.get("status", "")).startswith("rejected")


def is_diverged(t: FrozenTrial) -> bool:
    """Pruned because its training loss became nan or inf."""
    return str(t.user_attrs.get("status", "")).startswith("pruned: diverged")


def is_feasible_complete(t: FrozenTrial, budget: int) -> bool:
    """Complete, with an accuracy, and within the budget (its constraints, where recorded)."""
    params = t.user_attrs.get("params")
    return (
        t.state == TrialState.COMPLETE
        and t.value is not None
        and math.isfinite(t.value)
        and isinstance(params, int)
        and params <= budget
        and all(c <= 0 for c in t.constraints.values())
    )


def find_twin(study: optuna.Study, number: int, key: str) -> FrozenTrial | None:
    """An earlier finished trial of the same genotype that was trained (not rejected)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if (
            t.number != number
            and t.user_attrs.get("key") == key
            and not is_rejected(t)
            and "duplicate_of" not in t.user_attrs
        ):
            return t
    return None


# -- workers and stale trials ----------------------------------------------------------------


def worker_identity() -> dict[str, Any]:
    """Who runs a trial: host, pid and its start time, and what tells whether another process
    can judge that pid: the boot (a reboot ends every process) and the pid namespace
    (containers on one kernel may share a host name, not their pids)."""
    return {
        "host": provenance.host(),
        "pid": os.getpid(),
        "start": _process_start(os.getpid()),
        "machine": _read_id("/etc/machine-id"),
        "boot": _read_id("/proc/sys/kernel/random/boot_id"),
        "pidns": _pid_namespace(),
    }


def _read_id(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def worker_gone(worker: dict[str, Any]) -> bool:
    """Whether the worker that recorded ``worker`` has certainly stopped, judged from here.

    Only on the same host (and machine id, where both have one): after a reboot (another boot
    id) every process of the old boot is gone; within the same boot and pid namespace the pid
    tells. A worker in another pid namespace, or on another host, cannot be judged by pid: its
    heartbeat decides, on the storages that keep one.
    """
    here = worker_identity()
    if worker.get("host") != here["host"]:
        return False
    if worker.get("machine") and here["machine"] and worker["machine"] != here["machine"]:
        return False  # two machines of one name
    if "boot" in worker and worker["boot"] and here["boot"]:
        if worker["boot"] != here["boot"]:
            return True
        if worker.get("pidns") != here["pidns"]:
            return False
    return not _alive(worker["pid"], worker.get("start"))


def _process_start(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (tells a reused pid apart); Linux."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start is None or _process_start(pid) in (None, start)


def fail_stale_trials(study: optuna.Study, *, grace: int) -> list[int]:
    """Fail the RUNNING trials whose worker is gone, and retry each once. Returns their numbers.

    A worker on this machine is gone when its pid no longer runs (or runs another program), or
    when the machine rebooted since (see ``worker_gone``).
    A worker anywhere is gone when its heartbeat (RDB storages) has been silent for ``grace``
    seconds. A RUNNING trial that never recorded its worker (killed within its first instant)
    is stale once it is older than ``grace`` seconds.
    """
    storage = study._storage
    silent: set[int] = set()
    if is_heartbeat_enabled(storage):
        # Optuna's own fail_stale_trials would fail them before we could say why (a finished
        # trial is read-only), so ask for the silent ones and fail them here, reason first.
        silent = set(storage._get_stale_trial_ids(study._study_id))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=1)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if t._trial_id in silent:
            host = worker.get("host", "?") if worker else "?"
            reason = f"failed: its worker on {host} stopped beating for more than {grace} s"
        elif worker is None:
            age = time.time() - t.datetime_start.timestamp() if t.datetime_start else 0
            if age <= grace:
                continue
            reason = "failed: its worker stopped before it recorded itself"
        elif worker_gone(worker):
            reason = "failed: its worker stopped (killed, crashed or rebooted)"
        else:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "status", reason)
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        failed.append(t.number)
        retry(study, storage.get_trial(t._trial_id))
    return failed


def count_active(study: optuna.Study) -> int:
    """Trials that count toward the total: finished (complete, pruned, rejected) or running.
    Failed trials do not count: they are replaced, first by their queued retry."""
    return len(study.get_trials(deepcopy=False, states=COUNTED))


@dataclass
class WorkerReport:
    """What one worker did in this run."""

    finished: list[int] = dataclasses.field(default_factory=list)  # trial numbers
    failed: list[int] = dataclasses.field(default_factory=list)
    stopped: str = ""  # why the worker stopped


def work(
    ctx: Context,
    lock: ClaimLock,
    *,
    trials: int,
    deadline: float | None,
    grace: int,
    on_trial: Callable[[FrozenTrial], None] | None = None,
) -> WorkerReport:
    """Run trials until the study holds ``trials`` of them or ``deadline`` (time.time()) passes.

    Each trial is claimed under ``lock``: stale trials are cleaned, the active trials counted,
    and ``study.optimize`` asks for one more; the objective releases the lock as its first act.
    Optuna's optimize keeps the heartbeat of the trial and marks it failed on an exception.
    """
    report = WorkerReport()
    failures = 0

    def claimed(trial: optuna.Trial) -> float:
        # Who runs the trial is written before the lock is let go: a retry arrives with the
        # attributes of the trial it replaces, whose dead worker would make it look stale.
        trial.set_user_attr("worker", worker_identity())
        trial.set_user_attr("status", "running")
        lock.release()
        try:
            stop_if_asked()
            return objective(trial, ctx)
        except KeyboardInterrupt:
            # Written before Optuna marks the trial failed: a finished trial is read-only.
            trial.set_user_attr("status", "failed: interrupted (Ctrl-C)")
            raise
        except (optuna.TrialPruned, torch.cuda.OutOfMemoryError):
            raise  # the objective wrote the status
        except Exception as exc:  # a bug of ours or of a library: the trial says which
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            trial.set_user_attr("status", f"failed: {type(exc).__name__}: {first}")
            raise

    def after(study: optuna.Study, trial: FrozenTrial) -> None:
        (report.failed if trial.state == TrialState.FAIL else report.finished).append(trial.number)
        if on_trial is not None:
            on_trial(trial)

    while True:
        stop_if_asked()
        if deadline is not None and time.time() >= deadline:
            report.stopped = "timeout"
            break
        lock.acquire()
        try:
            fail_stale_trials(ctx.study, grace=grace)
            if count_active(ctx.study) >= trials:
                report.stopped = "done"
                break
            before = len(report.failed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ctx.study.optimize(
                    claimed,
                    n_trials=1,
                    catch=(torch.cuda.OutOfMemoryError,),
                    callbacks=[after],
                    gc_after_trial=False,
                )
        finally:
            lock.release()
        failures = failures + 1 if len(report.failed) > before else 0
        if failures >= MAX_CONSECUTIVE_FAILURES:
            report.stopped = f"{failures} trials in a row failed"
            break
    return report


# -- the summary ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Figures over the whole study."""

    total: int
    complete: int
    pruned: int
    rejected: int
    failed: int
    running: int
    waiting: int  # queued to run: retries, or trials enqueued by hand
    half_budget_share: float  # share of drawn candidates within the budget and over half of it
    rejected_share: float
    best: list[FrozenTrial]  # feasible complete trials, best first
    diverged: int = 0  # pruned because the training loss became nan or inf


def summarize(study: optuna.Study, budget: int, *, top: int = 5) -> Summary:
    trials = study.get_trials(deepcopy=False)
    drawn = [t for t in trials if "params" in t.user_attrs]
    rejected = [t for t in drawn if is_rejected(t)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # One row per genotype: a duplicate was not trained, it repeats its twin's result.
    feasible = [
        t
        for t in complete
        if is_feasible_complete(t, budget) and "duplicate_of" not in t.user_attrs
    ]
    best = sorted(feasible, key=lambda t: (-t.value, t.user_attrs["params"]))[:top]  # type: ignore[operator]
    return Summary(
        total=len(trials),
        complete=len(complete),
        pruned=sum(t.state == TrialState.PRUNED for t in trials) - len(rejected),
        rejected=len(rejected),
        failed=sum(t.state == TrialState.FAIL for t in trials),
        running=sum(t.state == TrialState.RUNNING for t in trials),
        waiting=sum(t.state == TrialState.WAITING for t in trials),
        half_budget_share=(
            sum(budget / 2 <= t.user_attrs["params"] <= budget for t in drawn) / len(drawn)
            if drawn
            else 0.0
        ),
        rejected_share=len(rejected) / len(drawn) if drawn else 0.0,
        best=best,
        diverged=sum(is_diverged(t) for t in trials),
    )


def no_result_line(s: Summary) -> str:
    """Why a study has no feasible complete trial, for the end of a search."""
    trained = s.total - s.rejected - s.running - s.waiting
    if s.diverged and s.diverged == trained:
        return (
            f"\nno result: every trained trial diverged ({s.diverged}: the training loss became "
            "nan or inf); try a lower --lr, and check the data"
        )
    parts = [f"{s.diverged} diverged"] if s.diverged else []
    parts += [f"{s.failed} failed"] if s.failed else []
    parts += [f"{s.rejected} rejected over budget"] if s.rejected else []
    return "\nno complete trial within the budget yet" + (f" ({', '.join(parts)})" if parts else "")


def trial_line(t: FrozenTrial, budget: int) -> str:
    """One log line for a finished trial."""
    params, macs = t.user_attrs.get("params"), t.user_attrs.get("macs")
    size = f"{format_count(params):>6} ({params / budget:4.0%})" if params else " " * 13
    size += f" {format_count(macs):>6} MACs" if macs else " " * 12
    status = t.user_attrs.get("status", t.state.name.lower())
    value = f"{t.value:.4f}" if t.value is not None else "  -   "
    seconds = t.user_attrs.get("train_seconds")
    took = f"{seconds:6.1f}s" if seconds is not None else " " * 7
    return f"trial {t.number:>4}  {value}  {size}  {took}  {status}"
