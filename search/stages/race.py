"""Race the leaders: train the best few again, longer and with several seeds, before choosing.

A trial's accuracy after a short training ranks architectures only roughly (see
``search.fidelity``), and the best of many noisy scores is partly luck. So the top ``top``
distinct searched architectures by the trial's accuracy, and the best reference (enqueued trial
or yardstick), train again at a longer setting: the trial's recipe and data, ``epochs`` epochs
(a complete schedule), ``seeds`` seeds (the same seeds for every entry), on the training split,
scored on the validation split once at the end. Their mean is the entry's ``race_val_acc``; the
race's best searched architecture is the search's choice. The test split is never touched.

Each entry and seed is a run folder (``<results>/<study>/race-<E>ep/<name>/seed-<s>/``), so a
killed race resumes; the study attribute ``race`` holds the result (Optuna keeps a finished
trial read-only, so ``race_val_acc`` lives there, keyed by entry, rather than on the trial).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import threading
from pathlib import Path
from typing import Any

import optuna
import torch

from search.data import Dataset
from search.experiment import Experiment
from search.jobs import DatasetCache, Job, run_jobs
from search.stages.references import genotype_of_reference, searched_trials, standing
from search.storage import ClaimLock
from search.study import SearchSettings
from space import Genotype

RACE_SEED = 2_000_000  # race seed k of every entry: seed + RACE_SEED + k


def race_folder(results: Path, study: str, epochs: int) -> Path:
    return results / study / f"race-{epochs}ep"


def run_race(
    study: optuna.Study,
    settings: SearchSettings,
    dataset: Dataset,
    *,
    top: int,
    seeds: int,
    epochs: int,
    seed: int,
    device: torch.device,
    concurrency: int,
    folder: Path,
    lock: ClaimLock,
    progress: bool,
    stop: threading.Event | None = None,
    mps: bool = False,
) -> dict[str, Any] | None:
    """Race the leaders and the best reference; record and return the study attribute
    ``race``; None when the study has no searched architecture to race."""
    budget = settings.budget
    leaders = searched_trials(study, budget)[:top]
    if not leaders:
        return None
    entries: list[dict[str, Any]] = [
        {
            "name": f"trial-{t.number}",
            "source": "search",
            "trial": t.number,
            "val_acc": t.value,
            "params": t.user_attrs.get("params"),
            "macs": t.user_attrs.get("macs"),
            "genotype": t.user_attrs["genotype"],
        }
        for t in leaders
    ]
    where = standing(study, budget)
    best = where.best_reference
    if best is not None:
        g = _reference_genotype(study, best.name, best.trial)
        if g is not None:
            entries.append(
                {
                    "name": best.name,
                    "source": "reference",
                    "trial": best.trial,
                    "val_acc": best.val_acc,
                    "params": best.params,
                    "macs": best.macs,
                    "genotype": g.to_dict(),
                }
            )
    jobs = []
    for e in entries:
        for k in range(seeds):
            train = dataclasses.replace(settings.train, epochs=epochs, seed=seed + RACE_SEED + k)
            experiment = Experiment(
                name=e["name"],
                genotype=Genotype.from_dict(e["genotype"]),
                data=settings.data,
                train=train,
                eval_each_epoch=True,
                eval_epochs=(epochs,),
                test=False,
            )
            label = f"race {e['name']} seed {k + 1}"
            jobs.append(Job(experiment, folder / e["name"] / f"seed-{train.seed}", label=label))
    outcomes = run_jobs(
        jobs,
        datasets=DatasetCache({settings.data: dataset}),
        device=device,
        concurrency=concurrency,
        mps=mps,
        progress=progress,
        desc="race",
        stop=stop,
    )
    for i, e in enumerate(entries):
        runs = outcomes[i * seeds : (i + 1) * seeds]
        accs = [o.metrics["val_acc"] for o in runs if o.metrics is not None]
        e["race_runs"] = accs
        e["race_val_acc"] = statistics.fmean(accs) if len(accs) == seeds else None
        errors = [o.error for o in runs if o.error]
        if errors:
            e["error"] = errors[0]
        del e["genotype"]
    record = summarize_race(entries, epochs=epochs, seeds=seeds, top=top)
    lock.acquire()
    try:
        study.set_user_attr("race", record)
    finally:
        lock.release()
    return record


def _reference_genotype(study: optuna.Study, name: str, trial: int | None) -> Genotype | None:
    if trial is not None:
        t = study.trials[trial]
        return Genotype.from_dict(t.user_attrs["genotype"])
    return genotype_of_reference(study, name)


def summarize_race(
    entries: list[dict[str, Any]], *, epochs: int, seeds: int, top: int
) -> dict[str, Any]:
    """The race's record: entries best first, the winner (best searched), the best reference,
    the margin between them and the seed spread to weigh it against."""
    done = [e for e in entries if e.get("race_val_acc") is not None]
    done.sort(key=lambda e: (-e["race_val_acc"], -(e.get("val_acc") or 0.0)))
    rest = [e for e in entries if e.get("race_val_acc") is None]
    searched = [e for e in done if e["source"] == "search"]
    reference = next((e for e in done if e["source"] == "reference"), None)
    spread = pooled_spread([e["race_runs"] for e in done])
    winner = searched[0] if searched else None
    margin = (
        winner["race_val_acc"] - reference["race_val_acc"]
        if winner is not None and reference is not None
        else None
    )
    return {
        "epochs": epochs,
        "seeds": seeds,
        "top": top,
        "entries": done + rest,
        "winner": None if winner is None else winner["name"],
        "winner_trial": None if winner is None else winner["trial"],
        "best_reference": None if reference is None else reference["name"],
        "margin": margin,
        "spread": spread,
        "verdict": race_verdict(margin, spread),
    }


def pooled_spread(runs: list[list[float]]) -> float | None:
    """Standard deviation over seeds pooled over the entries (all ran the same seeds)."""
    several = [r for r in runs if len(r) > 1]
    dof = sum(len(r) - 1 for r in several)
    if dof == 0:
        return None
    return math.sqrt(sum((len(r) - 1) * statistics.variance(r) for r in several) / dof)


def race_verdict(margin: float | None, spread: float | None) -> str:
    """'beat', 'lost' or 'tie': a margin within twice the seed spread is a tie."""
    if margin is None:
        return "no reference raced"
    if spread is None:
        return "ahead (one seed)" if margin > 0 else "behind (one seed)"
    if abs(margin) <= 2 * spread:
        return "tie"
    return "beat" if margin > 0 else "lost"


def race_record(study: optuna.Study) -> dict[str, Any] | None:
    record = study.user_attrs.get("race")
    return record if isinstance(record, dict) else None


def race_lines(record: dict[str, Any]) -> list[str]:
    """Plain text: the race table and its verdict."""
    out = [
        f"race: {len(record['entries'])} entries, {record['epochs']} epochs, "
        f"{record['seeds']} seed(s) each, validation accuracy (mean over seeds)",
        f"  {'entry':<20} {'trial acc':>9} {'race acc':>9}  runs",
    ]
    for e in record["entries"]:
        race = "-" if e.get("race_val_acc") is None else f"{e['race_val_acc']:.4f}"
        trial = "-" if e.get("val_acc") is None else f"{e['val_acc']:.4f}"
        runs = ", ".join(f"{a:.4f}" for a in e.get("race_runs", [])) or e.get("error", "")
        mark = "  <- the choice" if e["name"] == record["winner"] else ""
        kind = " (reference)" if e["source"] == "reference" else ""
        out.append(f"  {e['name'] + kind:<20} {trial:>9} {race:>9}  {runs}{mark}")
    if record.get("margin") is not None:
        spread = record.get("spread")
        out.append(
            f"  {record['winner']} against {record['best_reference']}: "
            f"{100 * record['margin']:+.2f} points"
            + (f", seed spread {100 * spread:.2f}" if spread is not None else "")
            + f": {record['verdict']}"
        )
    return out


def choice_of(study: optuna.Study) -> dict[str, Any] | None:
    """The search's choice as recorded (study attribute ``choice``), else None."""
    record = study.user_attrs.get("choice")
    return record if isinstance(record, dict) else None


def choose(study: optuna.Study, budget: int, race: dict[str, Any] | None) -> dict[str, Any] | None:
    """The searched network the search chooses: the race's winner, or without a race the best
    searched trial by validation accuracy; None when there is none."""
    searched = searched_trials(study, budget)
    if not searched:
        return None
    by_number = {t.number: t for t in searched}
    winner = race.get("winner_trial") if race else None
    t = by_number.get(winner, searched[0]) if winner is not None else searched[0]
    entry = next((e for e in (race or {}).get("entries", []) if e.get("trial") == t.number), {})
    return {
        "name": f"trial-{t.number}",
        "trial": t.number,
        "genotype": t.user_attrs["genotype"],
        "val_acc": t.value,
        "race_val_acc": entry.get("race_val_acc"),
        "how": "the race's winner" if winner is not None else "the best trial",
    }


def record_choice(
    study: optuna.Study,
    chosen: dict[str, Any],
    recipe: dict[str, Any] | None,
    *,
    lock: ClaimLock,
) -> dict[str, Any]:
    """Write the study attribute ``choice``: the chosen network with the recipe stage's best
    recipe where it ran (else the recipe it trained with in the search)."""
    g = Genotype.from_dict(chosen["genotype"])
    searched_recipe = recipe is not None and recipe.get("augment") is not None
    if searched_recipe:
        from space import Augment

        g = g.replace(augment=Augment(**recipe["augment"]))  # type: ignore[index]
    record = {
        **chosen,
        "genotype": g.to_dict(),
        "key": g.key(),
        "recipe": "searched" if searched_recipe else "trial",
        "recipe_val_acc": recipe.get("val_acc") if recipe else None,
    }
    lock.acquire()
    try:
        study.set_user_attr("choice", record)
    finally:
        lock.release()
    return record
