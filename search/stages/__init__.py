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
