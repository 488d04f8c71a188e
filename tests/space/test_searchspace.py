from __future__ import annotations

import copy
import dataclasses
import math
import re

import optuna
import pytest

from space import Augment, Genotype, UserError, build, count_params, scale_widths
from space._toml import load_toml
from space.searchspace import (
    AUGMENT_CHOICES,
    SearchSpace,
    express,
    sample,
    sample_augment,
    smallest_network,
)
from tests.conftest import ROOT

DEFAULT = ROOT / "configs" / "space" / "default.toml"


def study(seed: int = 0) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))


@pytest.mark.parametrize("budget", [400_000, 5_000_000])
def test_samples_fill_the_budget(budget: int) -> None:
    space = SearchSpace.load(DEFAULT)
    s = study()
    shares = []
    for _ in range(100):
        trial = s.ask()
        drawn = sample(trial, space, budget=budget, num_classes=10)
        assert drawn.fitted
        assert (
            drawn.params == count_params(drawn.genotype, num_classes=10) <= drawn.target <= budget
        )
        shares.append(drawn.params / budget)
        s.tell(trial, 0.0)
    # budget_fill is drawn in [0.5, 1]: nothing tiny, and a spread below the budget.
    assert min(shares) > 0.35
    assert max(shares) > 0.9
    assert sum(share < 0.75 for share in shares) >= 10


def test_the_trial_params_rebuild_the_same_genotype() -> None:
    space = SearchSpace.load(DEFAULT)
    s = study(1)
    for _ in range(20):
        trial = s.ask()
        drawn = sample(trial, space, budget=400_000, num_classes=10)
        s.tell(trial, 0.0)
        again = sample(optuna.trial.FixedTrial(trial.params), space, budget=400_000, num_classes=10)
        assert again.genotype == drawn.genotype


def test_fixed_values_are_not_drawn() -> None:
    space = SearchSpace.load(DEFAULT)
    trial = study().ask()
    drawn = sample(trial, space, budget=None, num_classes=10)
    assert "flip" not in trial.params and "base_width" not in trial.params
    assert "budget_fill" not in trial.params  # no budget: nothing to fill
    assert drawn.genotype.augment.flip is True
    assert drawn.genotype.stages[0].width == 64
    build(drawn.genotype, num_classes=10)


def test_which_stages_downsample_comes_from_the_preset() -> None:
    def patterns(space: SearchSpace) -> set[tuple[bool, ...]]:
        s, seen = study(2), set()
        for _ in range(60):
            trial = s.ask()
            g = sample(trial, space, budget=400_000, num_classes=10).genotype
            seen.add(tuple(st.downsample for st in g.stages))
            s.tell(trial, 0.0)
        return seen

    default = patterns(SearchSpace.load(DEFAULT))  # stage 1 drawn, later stages always halve
    assert {p[0] for p in default} == {False, True} and all(all(p[1:]) for p in default)
    raw = load_toml(DEFAULT)
    raw["params"]["later_downsample"] = [True, False]
    drawn = patterns(SearchSpace.from_dict(raw))
    assert any(not all(p[1:]) for p in drawn) and any(all(p[1:]) for p in drawn)


def test_unfitted_space_reports_over_budget_shapes() -> None:
    raw = load_toml(DEFAULT)
    raw["fit_to_budget"] = False
    raw["params"]["base_width"] = 256
    space = SearchSpace.from_dict(raw)
    trial = study().ask()
    drawn = sample(trial, space, budget=10_000, num_classes=10)
    assert drawn.target is None and drawn.params > 10_000


def test_shape_that_cannot_fit_comes_back_narrowest_and_unfitted() -> None:
    raw = load_toml(DEFAULT)
    raw["params"]["depth"] = 8
    raw["params"]["num_stages"] = 4
    drawn = sample(study().ask(), SearchSpace.from_dict(raw), budget=20_000, num_classes=10)
    assert not drawn.fitted
    assert all(s.width == 8 for s in drawn.genotype.stages)
    assert drawn.params > 20_000


def test_round_trip_of_the_space() -> None:
    space = SearchSpace.load(DEFAULT)
    again = SearchSpace.from_dict(space.to_dict(), name=space.name)
    assert again == space


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d["params"].update(colour=[1]), "unknown choice 'colour'"),
        (lambda d: d.update(extra=1), "unknown key 'extra'"),
        (lambda d: d["params"].pop("depth"), "lacks the choices: depth"),
        (lambda d: d["params"].update(depth={"low": 0, "high": 3}), "params.depth must hold"),
        (lambda d: d["params"].update(depth={"low": 5, "high": 3}), "low <= high must hold"),
        (lambda d: d["params"].update(block=["basic", "dense"]), "params.block must hold one of"),
        (lambda d: d["params"].update(pool=[]), "empty list"),
        (lambda d: d["params"].update(num_stages=[5]), "params.num_stages must hold"),
        (lambda d: d["params"].update(flip={"low": 0, "high": 1}), "not a range"),
        (lambda d: d["params"].update(depth={"low": 1, "hi": 3}), "must be a list of values"),
        (lambda d: d.update(width_multiple=0), "width_multiple must be"),
        (lambda d: d.update(fit_to_budget="yes"), "fit_to_budget must be"),
        (lambda d: d.pop("params"), "needs a [params] table"),
        # suggest_int takes a whole step; 0.5 became 0 there, and a division by zero
        (
            lambda d: d["params"].update(depth={"low": 1, "high": 8, "step": 0.5}),
            "params.depth.step must be a positive whole number",
        ),
        (
            lambda d: d["params"].update(budget_fill={"low": 0.5, "high": 1, "step": math.nan}),
            "params.budget_fill.step must be a positive number",
        ),
        (
            lambda d: d["params"].update(budget_fill={"low": 0.5, "high": 1, "step": math.inf}),
            "params.budget_fill.step must be a positive number",
        ),
    ],
)
def test_bad_presets_are_user_errors(change, fragment: str) -> None:
    raw = copy.deepcopy(load_toml(DEFAULT))
    change(raw)
    with pytest.raises(UserError) as info:
        SearchSpace.from_dict(raw, name="t")
    assert fragment in str(info.value)


def test_sample_is_the_only_caller_of_suggest() -> None:
    callers = []
    for path in ROOT.glob("*/**/*.py"):
        if ".venv" in path.parts or "tests" in path.parts:
            continue
        if re.search(r"\.suggest_(int|float|categorical|uniform|loguniform)\(", path.read_text()):
            callers.append(path.relative_to(ROOT).as_posix())
    assert callers == ["space/searchspace.py"]


@pytest.mark.parametrize("fit", [True, False])
def test_smallest_network_is_no_larger_than_any_drawn_one(fit: bool) -> None:
    # Against brute force: the narrowest version of 3,000 random draws, counted the same way
    # (2 classes, 1 channel); none may undercut it.
    raw = load_toml(DEFAULT)
    raw["fit_to_budget"] = fit
    raw["params"]["base_width"] = {"low": 8, "high": 64}
    space = SearchSpace.from_dict(raw)
    smallest = smallest_network(space)
    s = study(seed=1)
    counts = []
    for _ in range(3000):
        g = sample(s.ask(), space, budget=None, num_classes=2, in_channels=1).genotype
        if fit:
            g = scale_widths(g, 0.0, multiple=space.width_multiple)
        counts.append(count_params(g, num_classes=2, in_channels=1))
    assert smallest <= min(counts)
    if fit:  # every width at its narrowest: random draws come close; not a meaningless floor
        assert smallest >= min(counts) * 0.5


# -- one recipe, and the references in the space ----------------------------------------------

STANDARD = Augment(crop_padding=4, flip=True, label_smoothing=0.1)
AUGMENT_NAMES = set(AUGMENT_CHOICES)


def test_a_space_with_one_recipe_draws_no_augmentation() -> None:
    space = SearchSpace.load(DEFAULT).with_recipe(STANDARD)
    s = study(seed=3)
    for _ in range(50):
        trial = s.ask()
        g = sample(trial, space, budget=400_000, num_classes=10).genotype
        assert g.augment == STANDARD
        assert not AUGMENT_NAMES & set(trial.params)
    assert not space.draws_recipe and SearchSpace.load(DEFAULT).draws_recipe
    # recorded and read back, the recipe stays fixed
    again = SearchSpace.from_dict(space.to_dict())
    assert again.params == space.params


def test_the_recipe_space_draws_the_augmentation_alone() -> None:
    recipes = SearchSpace.load(DEFAULT).recipe_space()
    assert set(recipes.params) == AUGMENT_NAMES
    s = study(seed=4)
    drawn = {sample_augment(s.ask(), recipes) for _ in range(40)}
    assert len(drawn) > 10  # the space's choices, not one recipe


@pytest.mark.parametrize(
    ("name", "budget", "expressible"),
    [
        ("resnet20", 400_000, True),
        ("mini-resnet", 400_000, True),
        ("small-res-dropout", 400_000, False),  # head dropout 0.2: the space has 0, 0.1, 0.3
        ("resnet32", 400_000, False),  # over the budget
        ("res4-32", 5_000_000, True),
        ("res3-66", 5_000_000, False),  # widths off the space's 8-channel grid
        ("resnet20", 5_000_000, False),  # fills 5% of the budget; the space draws 50-100%
    ],
)
def test_express_finds_the_choices_that_draw_a_reference(
    name: str, budget: int, expressible: bool
) -> None:
    g = Genotype.load(ROOT / "configs" / "reference" / f"{name}.toml")
    space = SearchSpace.load(DEFAULT).with_recipe(g.augment)
    values = express(g, space, budget=budget, num_classes=10)
    assert (values is not None) == expressible
    if values is None:
        return
    # Through Optuna itself, as the search enqueues it: the trial draws exactly the reference.
    s = study(seed=5)
    s.enqueue_trial(values, user_attrs={"reference": name})
    trial = s.ask()
    assert trial.user_attrs["reference"] == name
    assert sample(trial, space, budget=budget, num_classes=10).genotype == g


def test_every_expressed_draw_of_the_mixed_space_comes_back_through_optuna() -> None:
    # Soundness over many genotypes: whenever express answers, an Optuna trial given its values
    # draws the same genotype (categorical values of the right type, floats inside their ranges).
    space = SearchSpace.load(ROOT / "configs" / "space" / "mixed.toml")
    s = study(seed=6)
    answered = 0
    for _ in range(300):
        g = sample(s.ask(), space, budget=400_000, num_classes=10).genotype
        # widths on exact ratios of each other, as hand-designed networks have them
        g = g.replace(
            stages=tuple(dataclasses.replace(st, width=16 * 2**i) for i, st in enumerate(g.stages)),
            stem_width=16,
        )
        values = express(g, space, budget=400_000, num_classes=10)
        if values is None:
            continue
        answered += 1
        inner = study(seed=7)
        inner.enqueue_trial(values)
        assert sample(inner.ask(), space, budget=400_000, num_classes=10).genotype == g
    assert answered >= 10
