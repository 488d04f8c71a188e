"""The search space as data, and the one function that draws a genotype from an Optuna trial.

A preset (``configs/space/*.toml``) gives, for every choice, either a list of values, a range
``{ low = .., high = .., log = .., step = .. }`` or a single fixed value. ``sample`` draws the
shape of a network (stages, depths, blocks, relative widths, layout, augmentation), then scales
all widths together so that the network fills a drawn share of the parameter budget
(``budget_fill``): trials are spent near the budget, and the share keeps some spread below it.
An optional limit on multiply-accumulates (``max_macs``) caps the widths as well.

The choices added with the mbconv and convnext blocks (``kernel``, ``expansion``, ``se``,
``activation``, ``norm``) are optional in a preset: left out, they are not drawn and take the
genotype's defaults, so an older preset draws, records and resumes exactly as before.

``sample`` is the only place in the project that calls ``trial.suggest_*``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from space._budget import count, count_params, fit_to_budget, scale_widths
from space._toml import load_toml
from space.errors import UserError
from space.genotype import (
    ACTIVATIONS,
    AUTO_AUGMENTS,
    BLOCK_TYPES,
    DOWNSAMPLES,
    EXPANDING_BLOCKS,
    HEADS,
    KERNELS,
    MAX_DEPTH,
    MAX_EXPANSION,
    MAX_STAGES,
    MAX_WIDTH,
    NORMS,
    POOLS,
    SHORTCUTS,
    Augment,
    Genotype,
    Stage,
)

# What each drawn choice may hold: ("int", low, high), ("float", low, high), ("bool",),
# ("str", allowed values) or ("choice", allowed numbers; a list, never a range). Every key of
# _SCHEMA must appear in a preset; those of _OPTIONAL may, and default to the genotype's default.
_SCHEMA: dict[str, tuple[Any, ...]] = {
    # shape
    "num_stages": ("int", 1, MAX_STAGES),
    "depth": ("int", 1, MAX_DEPTH),  # drawn per stage
    "block": ("str", BLOCK_TYPES),  # drawn per stage
    "width_growth": ("float", 0.25, 4.0),  # width of stage i+1 / width of stage i, per stage
    "block_dropout": ("float", 0.0, 0.9),  # per stage
    "base_width": ("int", 1, MAX_WIDTH),  # stage-1 width before scaling to the budget
    "stem_ratio": ("float", 0.125, 4.0),  # stem width / stage-1 width
    "stem_bias": ("bool",),
    "first_downsample": ("bool",),  # whether stage 1 also halves the resolution
    "later_downsample": ("bool",),  # whether stages 2 and later halve it (drawn per stage)
    "downsample": ("str", DOWNSAMPLES),
    "shortcut": ("str", SHORTCUTS),
    "pool": ("str", POOLS),
    "head": ("str", HEADS),
    "head_dropout": ("float", 0.0, 0.9),
    "budget_fill": ("float", 0.01, 1.0),  # share of the budget the widths are scaled to fill
    # augmentation and regularisation
    "crop_padding": ("int", 0, 64),
    "flip": ("bool",),
    "cutout": ("int", 0, 1024),
    "auto_augment": ("str", AUTO_AUGMENTS),
    "auto_magnitude": ("int", 0, 30),  # drawn only when auto_augment is randaugment
    "mixup_alpha": ("float", 0.0, 10.0),
    "cutmix_alpha": ("float", 0.0, 10.0),
    "label_smoothing": ("float", 0.0, 0.5),
}
_OPTIONAL: dict[str, tuple[Any, ...]] = {
    "kernel": ("choice", KERNELS),  # per stage: every spatial conv's side
    "expansion": ("int", 1, MAX_EXPANSION),  # per stage; drawn only for blocks that have one
    "se": ("float", 0.0, 1.0),  # per stage: squeeze-excitation ratio, 0 = off
    "activation": ("str", ACTIVATIONS),
    "norm": ("str", NORMS),
}
_SETTINGS = ("description", "fit_to_budget", "width_multiple", "params")
# The choices of the augmentation recipe, and the Augment field each sets.
AUGMENT_CHOICES = {
    "crop_padding": "crop_padding",
    "flip": "flip",
    "cutout": "cutout",
    "auto_augment": "auto",
    "auto_magnitude": "auto_magnitude",
    "mixup_alpha": "mixup_alpha",
    "cutmix_alpha": "cutmix_alpha",
    "label_smoothing": "label_smoothing",
}


class TrialLike(Protocol):
    """The part of ``optuna.trial.Trial`` that ``sample`` uses (so space/ never imports Optuna)."""

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int: ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class Param:
    """One choice of the space: a list of values, or a numeric range."""

    kind: str  # "int", "float", "bool" or "str"
    choices: tuple[Any, ...] | None = None  # a list of values (one value: fixed)
    low: float | None = None  # a range: low..high, optionally log-spaced or stepped
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def fixed(self) -> Any:
        """The value when there is nothing to draw, else None."""
        if self.choices is not None and len(self.choices) == 1:
            return self.choices[0]
        if self.low is not None and self.low == self.high:
            return self.low
        return None

    def to_toml_value(self) -> Any:
        if self.choices is not None:
            return list(self.choices)
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class SearchSpace:
    """A preset: the ranges of every choice, and how widths are fitted to the budget."""

    params: Mapping[str, Param]
    fit_to_budget: bool = True  # scale widths so each candidate fills budget_fill of the budget
    width_multiple: int = 8  # every scaled width is a multiple of this many channels
    description: str = ""
    name: str = "custom"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, name: str = "custom") -> SearchSpace:
        for key in data:
            if key not in _SETTINGS:
                raise UserError(
                    f"unknown key {key!r} in search space {name!r}; allowed: {', '.join(_SETTINGS)}"
                )
        raw = data.get("params")
        if not isinstance(raw, Mapping):
            raise UserError(f"search space {name!r} needs a [params] table of choices")
        for key in raw:
            if key not in _SCHEMA and key not in _OPTIONAL:
                raise UserError(
                    f"unknown choice {key!r} in search space {name!r}; allowed: "
                    f"{', '.join([*_SCHEMA, *_OPTIONAL])}"
                )
        missing = [k for k in _SCHEMA if k not in raw]
        if missing:
            raise UserError(f"search space {name!r} lacks the choices: {', '.join(missing)}")
        # Required choices first, then the optional ones the preset gives: to_dict keeps this
        # order, and an older preset's record stays as it was.
        schema = {**_SCHEMA, **{k: v for k, v in _OPTIONAL.items() if k in raw}}
        params = {key: _parse_param(f"params.{key}", raw[key], schema[key]) for key in schema}
        fit = data.get("fit_to_budget", True)
        if not isinstance(fit, bool):
            raise UserError(f"fit_to_budget must be true or false, but got {fit!r}")
        multiple = data.get("width_multiple", 8)
        if isinstance(multiple, bool) or not isinstance(multiple, int) or not 1 <= multiple <= 64:
            raise UserError(f"width_multiple must be an integer in [1, 64], but got {multiple!r}")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise UserError(f"description must be a string, but got {description!r}")
        return cls(
            params=params,
            fit_to_budget=fit,
            width_multiple=multiple,
            description=description,
            name=name,
        )

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        return cls.from_dict(load_toml(path), name=path.stem)

    def with_recipe(self, augment: Augment) -> SearchSpace:
        """This space with every augmentation choice fixed to ``augment``: its networks all
        train with one recipe, so their accuracies compare architectures."""
        fixed = {
            name: Param(kind=self.params[name].kind, choices=(getattr(augment, field),))
            for name, field in AUGMENT_CHOICES.items()
        }
        return dataclasses.replace(self, params={**self.params, **fixed})

    def recipe_space(self) -> SearchSpace:
        """The augmentation choices alone (what the recipe stage of a search draws)."""
        return dataclasses.replace(
            self, params={k: v for k, v in self.params.items() if k in AUGMENT_CHOICES}
        )

    @property
    def draws_recipe(self) -> bool:
        """Whether any augmentation choice is drawn (not fixed)."""
        return any(self.params[k].fixed is None for k in AUGMENT_CHOICES if k in self.params)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that ``from_dict`` reads back (what a study records)."""
        return {
            "description": self.description,
            "fit_to_budget": self.fit_to_budget,
            "width_multiple": self.width_multiple,
            "params": {k: p.to_toml_value() for k, p in self.params.items()},
        }


def _parse_param(where: str, raw: Any, schema: tuple[Any, ...]) -> Param:
    kind = schema[0]

    def check(value: Any) -> Any:
        if kind == "bool":
            ok = isinstance(value, bool)
            allowed = "true or false"
        elif kind == "choice":
            ok = not isinstance(value, bool) and value in schema[1]
            allowed = f"one of {', '.join(map(str, schema[1]))}"
        elif kind == "str":
            ok = value in schema[1]
            allowed = f"one of {', '.join(schema[1])}"
        else:
            is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind == "int":
                is_num = is_num and float(value).is_integer()
            ok = is_num and math.isfinite(value) and schema[1] <= value <= schema[2]
            allowed = (
                f"{'an integer' if kind == 'int' else 'a number'} in [{schema[1]}, {schema[2]}]"
            )
        if not ok:
            raise UserError(f"{where} must hold {allowed}, but got {value!r}")
        if kind in ("int", "choice"):
            return int(value)
        return float(value) if kind == "float" else value

    if isinstance(raw, list):
        if not raw:
            raise UserError(f"{where} is an empty list; give at least one value")
        return Param(kind=kind, choices=tuple(check(v) for v in raw))
    if isinstance(raw, Mapping):
        if kind in ("bool", "str", "choice"):
            raise UserError(f"{where} takes a list of values, not a range: got {dict(raw)!r}")
        extra = set(raw) - {"low", "high", "log", "step"}
        if extra or "low" not in raw or "high" not in raw:
            raise UserError(
                f"{where} must be a list of values or {{ low = .., high = .. }} with optional "
                f"log and step, but got {dict(raw)!r}"
            )
        low, high = check(raw["low"]), check(raw["high"])
        if low > high:
            raise UserError(f"{where}: low <= high must hold, but got (low={low}, high={high})")
        log = raw.get("log", False)
        step = raw.get("step")
        if not isinstance(log, bool):
            raise UserError(f"{where}.log must be true or false, but got {log!r}")
        if log and low <= 0:
            raise UserError(f"{where}: a log range needs low > 0, but got low={low}")
        if step is not None and (
            isinstance(step, bool)
            or not isinstance(step, (int, float))
            or not (math.isfinite(step) and step > 0)
            or log
            or (kind == "int" and not float(step).is_integer())  # suggest_int's step is an int
        ):
            what = "a positive whole number" if kind == "int" else "a positive number"
            raise UserError(f"{where}.step must be {what} (and not log), but got {step!r}")
        return Param(kind=kind, low=low, high=high, log=log, step=step)
    return Param(kind=kind, choices=(check(raw),))


@dataclass(frozen=True)
class Sample:
    """What ``sample`` drew: the genotype, its counts and the budget share aimed at."""

    genotype: Genotype
    params: int
    target: int | None  # parameters the widths were scaled to fill; None without a budget
    fitted: bool  # False when even the narrowest version of the shape is over a limit
    macs: int = 0  # multiply-accumulates per image of sample's image_size


def sample(
    trial: TrialLike,
    space: SearchSpace,
    *,
    budget: int | None,
    num_classes: int,
    in_channels: int = 3,
    max_macs: int | None = None,
    image_size: int | tuple[int, int] = 32,
) -> Sample:
    """Draw a genotype from ``trial``: the shape, then widths scaled to fill part of the budget.

    With ``max_macs``, the widths are also kept to at most that many multiply-accumulates on an
    ``image_size`` image. With ``budget`` None, or a space with ``fit_to_budget = false``,
    widths are the drawn base widths (and ``max_macs`` is the caller's to check). A shape that is
    over a limit even at its narrowest comes back narrowest with ``fitted`` False; the caller
    rejects it before building anything.
    """
    p = space.params

    def draw(name: str, param: Param) -> Any:
        return _draw(trial, name, param)

    def draw_optional(name: str, key: str, default: Any) -> Any:
        return draw(name, p[key]) if key in p else default

    num_stages = draw("num_stages", p["num_stages"])
    first_downsample = draw("first_downsample", p["first_downsample"])
    base = draw("base_width", p["base_width"])
    stages = []
    width = float(base)
    for i in range(num_stages):
        if i > 0:
            width *= draw(f"s{i}_width_growth", p["width_growth"])
        stage = Stage(
            depth=draw(f"s{i}_depth", p["depth"]),
            width=max(1, round(width)),
            block=draw(f"s{i}_block", p["block"]),
            downsample=bool(
                first_downsample if i == 0 else draw(f"s{i}_downsample", p["later_downsample"])
            ),
            dropout=draw(f"s{i}_dropout", p["block_dropout"]),
        )
        # The later choices, after the first ones (the draws of an older preset stay the same).
        kernel = draw_optional(f"s{i}_kernel", "kernel", stage.kernel)
        expansion = (
            draw_optional(f"s{i}_expansion", "expansion", stage.expansion)
            if stage.block in EXPANDING_BLOCKS
            else stage.expansion
        )
        se = draw_optional(f"s{i}_se", "se", stage.se)
        stages.append(dataclasses.replace(stage, kernel=kernel, expansion=expansion, se=se))
    augment = sample_augment(trial, space)
    genotype = Genotype(
        stages=tuple(stages),
        stem_width=max(1, round(base * draw("stem_ratio", p["stem_ratio"]))),
        stem_bias=draw("stem_bias", p["stem_bias"]),
        downsample=draw("downsample", p["downsample"]),
        shortcut=draw("shortcut", p["shortcut"]),
        pool=draw("pool", p["pool"]),
        head=draw("head", p["head"]),
        head_dropout=draw("head_dropout", p["head_dropout"]),
        augment=augment,
        activation=draw_optional("activation", "activation", "relu"),
        norm=draw_optional("norm", "norm", "batch"),
    )
    target = None
    fitted = True
    if budget is not None and space.fit_to_budget:
        fill = draw("budget_fill", p["budget_fill"])
        target = max(1, math.floor(budget * fill))
        scaled = fit_to_budget(
            genotype,
            target,
            num_classes=num_classes,
            in_channels=in_channels,
            multiple=space.width_multiple,
            max_macs=max_macs,
            image_size=image_size,
        )
        if scaled is None:
            fitted = False
            scaled = scale_widths(genotype, 0.0, multiple=space.width_multiple)
        genotype = scaled
    params, macs = count(
        genotype, num_classes=num_classes, in_channels=in_channels, image_size=image_size
    )
    return Sample(genotype=genotype, params=params, target=target, fitted=fitted, macs=macs)


def _draw(trial: TrialLike, name: str, param: Param) -> Any:
    fixed = param.fixed
    if fixed is not None:
        return fixed
    if param.choices is not None:
        return trial.suggest_categorical(name, list(param.choices))
    if param.kind == "int":
        step = int(param.step) if param.step else 1
        return trial.suggest_int(name, int(param.low), int(param.high), step=step, log=param.log)  # type: ignore[arg-type]
    return trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)  # type: ignore[arg-type]


def sample_augment(trial: TrialLike, space: SearchSpace) -> Augment:
    """Draw the augmentation recipe alone (``sample`` draws it with the shape, under the same
    names; the recipe stage of a search draws it for a network already chosen)."""
    p = space.params
    auto = _draw(trial, "auto_augment", p["auto_augment"])
    return Augment(
        crop_padding=_draw(trial, "crop_padding", p["crop_padding"]),
        flip=_draw(trial, "flip", p["flip"]),
        cutout=_draw(trial, "cutout", p["cutout"]),
        auto=auto,
        # TrivialAugment draws its own magnitudes; only RandAugment uses this one.
        auto_magnitude=(
            _draw(trial, "auto_magnitude", p["auto_magnitude"]) if auto == "randaugment" else 9
        ),
        mixup_alpha=_draw(trial, "mixup_alpha", p["mixup_alpha"]),
        cutmix_alpha=_draw(trial, "cutmix_alpha", p["cutmix_alpha"]),
        label_smoothing=_draw(trial, "label_smoothing", p["label_smoothing"]),
    )


class _ChosenTrial:
    """Draws the values in ``chosen`` and otherwise the lowest (first) one, noting for every
    name the values it could have drawn: a range's ends, a list's values."""

    def __init__(self, chosen: Mapping[str, Any]) -> None:
        self.chosen = chosen
        self.options: dict[str, list[Any]] = {}

    def _pick(self, name: str, options: list[Any]) -> Any:
        self.options.setdefault(name, options)
        return self.chosen.get(name, options[0])

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        return self._pick(name, [low, low + (high - low) // step * step])

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return self._pick(name, [low, high])

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._pick(name, list(choices))


def smallest_network(space: SearchSpace) -> int:
    """The fewest parameters a network of ``space`` has, or close to it: every width at
    ``width_multiple`` where the space scales widths, counted for 2 classes and 1 input channel
    (which no data set undercuts), minimised one choice at a time (coordinate descent over
    every list value and range end) until no single change gives fewer. A budget below it would
    reject every candidate untrained. Pure; a few hundred closed-form counts."""
    return _smallest(space, lambda g: count_params(g, num_classes=2, in_channels=1))


def smallest_macs(space: SearchSpace, *, image_size: int | tuple[int, int] = 32) -> int:
    """The fewest multiply-accumulates per ``image_size`` image a network of ``space`` has, or
    close to it, found as ``smallest_network`` finds the fewest parameters. A ``max_macs``
    below it would reject every candidate untrained."""
    return _smallest(
        space, lambda g: count(g, num_classes=2, in_channels=1, image_size=image_size)[1]
    )


def _smallest(space: SearchSpace, cost: Callable[[Genotype], int]) -> int:
    def measure(chosen: Mapping[str, Any]) -> tuple[int, dict[str, list[Any]]]:
        trial = _ChosenTrial(chosen)
        g = sample(trial, space, budget=None, num_classes=2, in_channels=1).genotype
        if space.fit_to_budget:
            g = scale_widths(g, 0.0, multiple=space.width_multiple)
        return cost(g), trial.options

    chosen: dict[str, Any] = {}
    best, options = measure(chosen)
    for _ in range(4):  # passes; one or two usually settle it
        improved = False
        for name in list(options):
            for value in options[name]:
                n, seen = measure({**chosen, name: value})
                if n < best:
                    best, chosen, improved = n, {**chosen, name: value}, True
                    options = {**seen, **options}  # names that only exist with this choice
        if not improved:
            break
    return best


class _GivenTrial:
    """Answers every draw from ``values`` and notes the names drawn; a name it lacks, or a
    value its distribution cannot hold, makes ``ok`` False."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values
        self.drawn: dict[str, Any] = {}
        self.ok = True

    def _give(self, name: str, allowed: Callable[[Any], bool], fallback: Any) -> Any:
        if name not in self.values or not allowed(self.values[name]):
            self.ok = False
            return fallback
        self.drawn[name] = self.values[name]
        return self.values[name]

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        return self._give(
            name,
            lambda v: isinstance(v, int) and low <= v <= high and (v - low) % step == 0,
            low,
        )

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        def allowed(v: Any) -> bool:
            if not isinstance(v, (int, float)) or not low <= v <= high:
                return False
            return step is None or math.isclose((v - low) / step, round((v - low) / step))

        return self._give(name, allowed, low)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        options = list(choices)
        return self._give(name, lambda v: v in options, options[0])


def express(
    genotype: Genotype,
    space: SearchSpace,
    *,
    budget: int,
    num_classes: int,
    in_channels: int = 3,
    max_macs: int | None = None,
    image_size: int | tuple[int, int] = 32,
) -> dict[str, Any] | None:
    """The values of ``space``'s choices that make ``sample`` draw exactly ``genotype`` under
    ``budget`` (what ``optuna.Study.enqueue_trial`` takes), or None when the space cannot
    express it: a choice outside its ranges, widths the budget-filling scale does not land on,
    a network over a budget. Checked by drawing it: the values given come back as the same
    genotype, or not at all."""
    stages = genotype.stages
    base = stages[0].width
    fixed_base = space.params["base_width"].fixed
    scale = 1.0 if fixed_base is None else fixed_base / base
    values: dict[str, Any] = {
        "num_stages": len(stages),
        "first_downsample": stages[0].downsample,
        "base_width": base if fixed_base is None else fixed_base,
        "stem_ratio": genotype.stem_width / base,
        "stem_bias": genotype.stem_bias,
        "downsample": genotype.downsample,
        "shortcut": genotype.shortcut,
        "pool": genotype.pool,
        "head": genotype.head,
        "head_dropout": genotype.head_dropout,
        "activation": genotype.activation,
        "norm": genotype.norm,
    }
    for i, stage in enumerate(stages):
        if i > 0:
            values[f"s{i}_width_growth"] = stage.width / stages[i - 1].width
            values[f"s{i}_downsample"] = stage.downsample
        values[f"s{i}_depth"] = stage.depth
        values[f"s{i}_block"] = stage.block
        values[f"s{i}_dropout"] = stage.dropout
        values[f"s{i}_kernel"] = stage.kernel
        values[f"s{i}_expansion"] = stage.expansion
        values[f"s{i}_se"] = stage.se
    values.update({name: getattr(genotype.augment, f) for name, f in AUGMENT_CHOICES.items()})
    values["auto_augment"] = genotype.augment.auto
    params, macs = count(
        genotype, num_classes=num_classes, in_channels=in_channels, image_size=image_size
    )
    if params > budget or (max_macs is not None and macs > max_macs):
        return None
    # floor(budget * fill) must come to the network's own count: aim half a parameter above it.
    values["budget_fill"] = min(1.0, (params + 0.5) / budget)
    del scale  # the scale is fit_to_budget's to find; the check below says whether it does
    trial = _GivenTrial(values)
    drawn = sample(
        trial,
        space,
        budget=budget,
        num_classes=num_classes,
        in_channels=in_channels,
        max_macs=max_macs,
        image_size=image_size,
    )
    if not trial.ok or not drawn.fitted or drawn.genotype != genotype:
        return None
    return dict(trial.drawn)
