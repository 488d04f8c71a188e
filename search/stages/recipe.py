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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=(seed * 1_000_003 + trial + host_salt()) % 2**32,
            n_startup_trials=max(1, trials // 3),
            multivariate=True,
            constant_liar=True,
        )
    inner = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=sampler,
        load_if_exists=True,
    )
    if not inner.user_attrs.get("architecture"):
        inner.set_user_attr("architecture", genotype.key())
        inner.set_user_attr("of", {"study": study.study_name, "trial": trial, "epochs": epochs})
        fixed = _fixed_values(genotype.augment, recipes)
        inner.enqueue_trial(fixed, user_attrs={"fixed": True})
    for t in inner.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # Only this stage runs trials of this study, one process at a time: a running trial
        # found at the start was left by a run that was killed.
        inner._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    cache = DatasetCache({settings.data: dataset})
    train = dataclasses.replace(settings.train, epochs=epochs, seed=seed + RECIPE_SEED)
    while True:
        done = inner.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        left = trials - len(done)
        if left <= 0:
            break
        with warnings.catch_warnings():  # ask/tell on a storage that keeps heartbeats
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            asked = [inner.ask() for _ in range(min(concurrency, left))]
        augments = [sample_augment(t, recipes) for t in asked]
        jobs = []
        for t, augment in zip(asked, augments, strict=True):
            experiment = Experiment(
                name=f"{name}-{t.number}",
                genotype=genotype.replace(augment=augment),
                data=settings.data,
                train=train,
                eval_each_epoch=True,
                eval_epochs=(epochs,),
                test=False,
            )
            t.set_user_attr("augment", dataclasses.asdict(augment))
            jobs.append(
                Job(experiment, folder / name / f"trial-{t.number}", label=f"recipe {t.number}")
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
        for t, o in zip(asked, outcomes, strict=True):
            if o.metrics is None:
                t.set_user_attr("status", o.error or "failed")
                inner.tell(t, state=TrialState.PRUNED)
            else:
                inner.tell(t, o.metrics["val_acc"])
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


def _fixed_values(augment: Augment, recipes: SearchSpace) -> dict[str, Any]:
    """The recipe stage's choices that draw ``augment`` (those of its choices that are drawn)."""
    from space.searchspace import AUGMENT_CHOICES

    values = {name: getattr(augment, f) for name, f in AUGMENT_CHOICES.items()}
    return {k: v for k, v in values.items() if recipes.params[k].fixed is None}


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
