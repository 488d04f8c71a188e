"""What a search does around its trials, so that it chooses a network that lasts.

``python -m search.run`` runs these in order, each resumable, in the process that reports to
the user (never in the ``--workers`` children):

1. ``references``: the budget's hand-designed networks enter the study. Those the space can
   express are enqueued as its first trials (user attribute ``reference``); the others train
   beside it at the trial setting as yardsticks (study attribute ``yardsticks``).
2. the trials (``search.study``), every candidate trained with one recipe unless the search is
   ``joint``, so that validation accuracy compares architectures.
3. ``race``: the top distinct searched architectures by the trial's accuracy and the best
   reference train again at a longer setting with several seeds, on the validation split; the
   race's best searched architecture is the search's choice (study attribute ``race``).
4. ``recipe``: the augmentation choices of the space are searched for the chosen architecture
   alone, at a training length close to the retrain's, on the validation split (a second study,
   ``<study>-recipe``; the result in the study attribute ``recipe``).

The choice (study attribute ``choice``) is what ``search.retrain`` and ``search.campaign`` train
as the search's network. Nothing here looks at the test split.
"""

import contextlib
import threading
import time

import optuna

from search.stages.race import choice_of, race_lines, race_record, run_race
from search.stages.recipe import describe_augment, recipe_lines, run_recipe_stage
from search.stages.references import (
    Reference,
    Standing,
    resolve_references,
    seed_study,
    standing,
    standing_of,
    train_yardsticks,
)
from search.storage import ClaimLock
from search.study import worker_gone, worker_identity

STAGES_ALIVE = 600  # seconds an owner on another machine counts as alive after its last beat


def claim_stages(study: optuna.Study, lock: ClaimLock) -> str | None:
    """Take the stages after the trials for this process (study attribute ``stages_owner``,
    kept fresh by a beat every minute); None when taken, else who holds them: a live process of
    this machine, or one of another machine that beat within ``STAGES_ALIVE`` seconds."""
    me = worker_identity()
    lock.acquire()
    try:
        owner = study.user_attrs.get("stages_owner")
        if isinstance(owner, dict) and owner.get("worker"):
            worker = owner["worker"]
            same = (worker.get("host"), worker.get("pid")) == (me["host"], me["pid"])
            fresh = time.time() - owner.get("time", 0) < STAGES_ALIVE
            if not same and not worker_gone(worker) and (worker.get("host") == me["host"] or fresh):
                return f"{worker.get('host')} pid {worker.get('pid')}"
        study.set_user_attr("stages_owner", {"worker": me, "time": time.time()})
    finally:
        lock.release()
    beat = threading.Event()

    def beating() -> None:
        while not beat.wait(60):
            with contextlib.suppress(Exception):
                study.set_user_attr("stages_owner", {"worker": me, "time": time.time()})

    thread = threading.Thread(target=beating, name="stages-owner", daemon=True)
    thread.start()
    _BEATS[id(study)] = (beat, thread)
    return None


def release_stages(study: optuna.Study, lock: ClaimLock) -> None:
    """Let the stages go (at their end, or when this process stops in them)."""
    beat, thread = _BEATS.pop(id(study), (None, None))
    if beat is not None:
        beat.set()
        thread.join(timeout=5)
    lock.acquire()
    try:
        study.set_user_attr("stages_owner", None)
    finally:
        lock.release()


_BEATS: dict[int, tuple[threading.Event, threading.Thread]] = {}


def story(trials, attrs, budget: int) -> list[str]:  # type: ignore[no-untyped-def]
    """How the search chose, in plain lines: where the references rank among the trials, the
    race, the recipe stage and the choice; none for a study made before these stages."""
    from space import Genotype

    where = standing_of(trials, attrs, budget)
    lines: list[str] = []
    if where.places:
        lines.append("references among the trials (validation accuracy at the trial setting):")
        lines += where.lines()
    race = attrs.get("race")
    if isinstance(race, dict):
        lines += race_lines(race)
    recipe = attrs.get("recipe")
    if isinstance(recipe, dict):
        lines += recipe_lines(recipe)
    choice = attrs.get("choice")
    if isinstance(choice, dict):
        augment = Genotype.from_dict(choice["genotype"]).augment
        lines.append(
            f"the search's choice: {choice['name']} ({choice['how']}), {describe_augment(augment)}"
        )
    return lines


__all__ = [
    "Reference",
    "Standing",
    "choice_of",
    "race_record",
    "resolve_references",
    "run_race",
    "run_recipe_stage",
    "seed_study",
    "standing",
    "story",
    "train_yardsticks",
]
