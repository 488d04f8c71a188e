"""The recipe stage: search the augmentation for the chosen architecture alone.

When every trial trains with one recipe, the space's augmentation choices are searched here, for
the network the race chose, at a training length close to the retrain's (``epochs``), on the
validation split: a second study, ``<study>-recipe-t<trial>-<epochs>ep`` in the same storage,
whose first trial is the search's own fixed recipe (so the stage ends with a recipe at least as
good as it on validation) and whose others TPE draws from the space's augmentation choices.
Every trial trains from the same seed, so two recipes differ by their recipe, not their seed.
Trials run ``concurrency`` at a time (ask, train side by side, tell). A trial left running by a
killed run is marked failed and replaced; the trials' run folders keep their finished epochs.

The result goes into the main study's attribute ``recipe``.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from search.data import Dataset
from search.experiment import Experiment
from search.jobs import DatasetCache, Job, run_jobs
from search.storage import ClaimLock
from search.study import SearchSettings, host_salt
from space import Augment, Genotype
from space.searchspace import SearchSpace, sample_augment

RECIPE_SEED = 3_000_000  # every recipe trial trains with seed + RECIPE_SEED


def recipe_study_name(study: str, trial: int, epochs: int) -> str:
    return f"{study}-recipe-t{trial}-{epochs}ep"


_RECIPE_STUDY = re.compile(r"-recipe-t\d+-\d+ep$")


def is_recipe_study(name: str) -> bool:
    """Whether a study is the recipe stage of another (kept in the same storage)."""
    return bool(_RECIPE_STUDY.search(name))


def run_recipe_stage(
    storage: optuna.storages.BaseStorage,
    study: optuna.Study,
    settings: SearchSettings,
    dataset: Dataset,
    *,
    space: SearchSpace,
    trial: int,
    genotype: Genotype,
    trials: int,
    epochs: int,
    seed: int,
    device: torch.device,
    concurrency: int,
    folder: Path,
    lock: ClaimLock,
    progress: bool,
    stop: threading.Event | None = None,
    mps: bool = False,
) -> dict[str, Any]:
    """Search ``trials`` recipes for ``genotype`` (trial ``trial`` of ``study``); record the
    best in ``study``'s attribute ``recipe`` and return it."""
    name = recipe_study_name(study.study_name, trial, epochs)
    recipes = space.recipe_space()
    inner = optuna.create_study(
        storage=storage, study_name=name, direction="maximize", load_if_exists=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Seeded also by the trials already there: a resumed stage draws new recipes.
        inner.sampler = optuna.samplers.TPESampler(
            seed=(seed * 1_000_003 + trial + 7919 * len(inner.trials) + host_salt()) % 2**32,
            n_startup_trials=max(1, trials // 3),
            multivariate=True,
            constant_liar=True,
        )
    if not inner.user_attrs.get("architecture"):
        inner.set_user_attr("architecture", genotype.key())
        inner.set_user_attr("of", {"study": study.study_name, "trial": trial, "epochs": epochs})
    fixed = _fixed_values(genotype.augment, recipes)
    states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    has_fixed = any(t.user_attrs.get("fixed") and t.state in states for t in inner.trials)
    if fixed is not None and not has_fixed:  # first, or again after a run killed in it
        inner.enqueue_trial(fixed, user_attrs={"fixed": True})
    # Only this stage runs trials of this study, one process at a time: a running trial found
    # at the start was left by a run that was killed. One that had drawn its recipe trains on
    # from its folder's last epoch; one killed before that is failed and replaced.
    resumed = []
    for t in inner.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "augment" in t.user_attrs:
            resumed.append(t.number)
        else:
            inner._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    cache = DatasetCache({settings.data: dataset})
    train = dataclasses.replace(settings.train, epochs=epochs, seed=seed + RECIPE_SEED)
    while True:
        done = inner.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        left = trials - len(done)
        if left <= 0:
            break
        batch: list[tuple[int, Augment]] = []
        for number in resumed[: max(1, concurrency)]:
            batch.append((number, Augment(**inner.trials[number].user_attrs["augment"])))
        resumed = resumed[len(batch) :]
        if not batch:
            with warnings.catch_warnings():  # ask/tell on a storage that keeps heartbeats
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                for _ in range(min(concurrency, left)):
                    t = inner.ask()
                    augment = sample_augment(t, recipes)
                    t.set_user_attr("augment", dataclasses.asdict(augment))
                    batch.append((t.number, augment))
        jobs = []
        for number, augment in batch:
            experiment = Experiment(
                name=f"{name}-{number}",
                genotype=genotype.replace(augment=augment),
                data=settings.data,
                train=train,
                eval_each_epoch=True,
                eval_epochs=(epochs,),
                test=False,
            )
            jobs.append(
                Job(experiment, folder / name / f"trial-{number}", label=f"recipe {number}")
            )
        outcomes = run_jobs(
            jobs,
            datasets=cache,
            device=device,
            concurrency=concurrency,
            mps=mps,
            progress=progress,
            desc="recipe",
            stop=stop,
        )
        for (number, _), o in zip(batch, outcomes, strict=True):
            if o.metrics is None:
                inner._storage.set_trial_user_attr(
                    inner.trials[number]._trial_id, "status", o.error or "failed"
                )
                inner.tell(number, state=TrialState.PRUNED)
            else:
                inner.tell(number, o.metrics["val_acc"])
    complete = inner.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    fixed_trial = next((t for t in complete if t.user_attrs.get("fixed")), None)
    record = {
        "study": name,
        "trial": trial,
        "epochs": epochs,
        "trials": len(complete),
        "augment": None if best is None else best.user_attrs["augment"],
        "val_acc": None if best is None else best.value,
        "best_trial": None if best is None else best.number,
        "fixed_val_acc": None if fixed_trial is None else fixed_trial.value,
        "fixed_augment": dataclasses.asdict(genotype.augment),
    }
    lock.acquire()
    try:
        study.set_user_attr("recipe", record)
    finally:
        lock.release()
    return record


def _fixed_values(augment: Augment, recipes: SearchSpace) -> dict[str, Any] | None:
    """The recipe stage's choices that draw ``augment`` (those of its choices that are drawn),
    or None when the space's choices cannot draw it (a recipe file with a crop of 8 where the
    space offers 0, 2 and 4, say): then it is no trial of the stage."""
    from space.searchspace import AUGMENT_CHOICES, _GivenTrial

    values = {name: getattr(augment, f) for name, f in AUGMENT_CHOICES.items()}
    given = _GivenTrial(values)
    if sample_augment(given, recipes) != augment or not given.ok:
        return None
    return dict(given.drawn)


def recipe_lines(record: dict[str, Any]) -> list[str]:
    if record.get("augment") is None:
        return ["recipe stage: no trial finished"]
    chosen = Augment(**record["augment"])
    fixed = record.get("fixed_val_acc")
    delta = (
        ""
        if fixed is None
        else f" ({100 * (record['val_acc'] - fixed):+.2f} points over the fixed recipe's "
        f"{fixed:.4f})"
    )
    return [
        f"recipe stage: {record['trials']} recipes for trial {record['trial']}, "
        f"{record['epochs']} epochs each, one seed",
        f"  best: validation accuracy {record['val_acc']:.4f}{delta}",
        f"  {describe_augment(chosen)}",
    ]


def describe_augment(a: Augment) -> str:
    parts = [f"crop {a.crop_padding}" if a.crop_padding else "no crop"]
    parts.append("flip" if a.flip else "no flip")
    if a.cutout:
        parts.append(f"cutout {a.cutout}")
    if a.auto != "none":
        parts.append(a.auto + (f" {a.auto_magnitude}" if a.auto == "randaugment" else ""))
    if a.mixup_alpha:
        parts.append(f"mixup {a.mixup_alpha:g}")
    if a.cutmix_alpha:
        parts.append(f"cutmix {a.cutmix_alpha:g}")
    parts.append(f"label smoothing {a.label_smoothing:g}")
    return ", ".join(parts)
