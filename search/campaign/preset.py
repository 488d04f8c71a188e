"""A campaign preset (``configs/campaign/*.toml``), read and checked: what to search at each
budget, the references that compete there, the data, the search's and the retraining's recipes.
Nothing here trains or writes; ``load_campaign`` creates nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from search.config import DataConfig, from_mapping
from search.retrain import RETRAIN_DEFAULTS
from search.stages.references import REFERENCES, reference_path
from search.study import SearchConfig, budget_label, is_name, parse_macs
from search.training import TrainConfig
from space import Genotype, parse_budget
from space._toml import load_toml
from space.errors import UserError

# [search] keys the campaign sets itself, per budget.
OWNED_SEARCH_KEYS = (
    "budget",
    "study_name",
    "storage",
    "results",
    "device",
    "references",
    "concurrency",
    "mps",
)


# -- the preset -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignConfig:
    """``[campaign]``: what the campaign is and where it runs."""

    name: str | None = None  # names the result folder; default the preset's file name
    description: str = ""  # one paragraph for the result's README
    device: str = "auto"  # auto, cpu, cuda, cuda:N: every stage runs there
    storage: Literal["sqlite", "journal"] = "sqlite"  # journal for [search] workers > 1
    swap_recipes: bool = False  # also train each side with the other side's augmentation
    # Trainings at once in the stages after the trials and in the retraining (models x seeds,
    # the longest first): per GPU on CUDA, each in a process of its own.
    concurrency: int = 1
    mps: bool = False  # with concurrency on CUDA: run NVIDIA's Multi-Process Service meanwhile

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise UserError(f"concurrency must be an integer >= 1, but got {self.concurrency}")


@dataclass(frozen=True)
class RetrainConfig:
    """``[retrain]`` keys besides the training recipe (any ``TrainConfig`` key may appear too)."""

    top: int = 2  # best distinct searched genotypes retrained per budget
    seeds: int = 2  # seeds per model, the same seeds for every model
    subset: int | None = None  # training images per class (training and validation merged)
    export: bool = True  # TorchScript/ONNX beside every model (seconds each; off saves time)

    def __post_init__(self) -> None:
        for name in ("top", "seeds"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be an integer >= 1, but got {getattr(self, name)}")
        if self.subset is not None and self.subset < 1:
            raise UserError(f"subset must be an integer >= 1, but got {self.subset}")


@dataclass(frozen=True)
class BudgetPlan:
    """One ``[[budgets]]`` entry: a budget, its study and the references that compete at it."""

    budget: int
    label: str  # 400k
    study: str  # the study's name
    references: tuple[Path, ...]
    search: Mapping[str, Any]  # the [search] table for this budget (overrides applied)
    top: int | None = None  # winners retrained at this budget ([retrain] top if None)
    retrain_epochs: int | None = None  # retraining epochs at this budget ([retrain] if None)


@dataclass(frozen=True)
class Campaign:
    """A campaign preset, read and checked."""

    name: str
    preset: Path
    config: CampaignConfig
    budgets: tuple[BudgetPlan, ...]
    data: Mapping[str, Any]  # [data], the search's (DataConfig keys)
    train: Mapping[str, Any]  # [train], the search trials' recipe (TrainConfig keys)
    retrain: RetrainConfig
    retrain_train: Mapping[str, Any]  # the retraining recipe's TrainConfig keys
    work: Path  # results/campaigns/<name>
    out: Path  # results/reference/<name>

    @property
    def seeds(self) -> range:
        """The seeds every model trains with (``search.retrain``: the first seed and on)."""
        first = self.retrain_train.get("seed", TrainConfig.seed)
        return range(first, first + self.retrain.seeds)

    def top(self, b: BudgetPlan) -> int:
        return b.top if b.top is not None else self.retrain.top

    def retrain_epochs(self, b: BudgetPlan) -> int:
        return self.retrain_recipe(b).get("epochs", RETRAIN_DEFAULTS["epochs"])

    def max_macs(self, b: BudgetPlan) -> int | None:
        value = b.search.get("max_macs")
        return None if value is None else parse_macs(value)

    def retrain_recipe(self, b: BudgetPlan) -> dict[str, Any]:
        """The retraining recipe's TrainConfig keys at budget ``b``."""
        recipe = dict(self.retrain_train)
        if b.retrain_epochs is not None:
            recipe["epochs"] = b.retrain_epochs
        return recipe

    def storage_url(self, b: BudgetPlan) -> str:
        suffix = "journal" if self.config.storage == "journal" else "db"
        prefix = "journal" if self.config.storage == "journal" else "sqlite"
        return f"{prefix}:///{self.work / b.study}.{suffix}"

    def search_tables(self, b: BudgetPlan) -> dict[str, dict[str, Any]]:
        """The preset ``search.run`` gets for budget ``b``."""
        search = {
            **b.search,
            "budget": b.label,
            "study_name": b.study,
            "results": str(self.work),
            "device": self.config.device,
            "storage": self.storage_url(b),
            # The budget's references enter the study: enqueued, or yardsticks beside it.
            "references": [p.stem if p.parent == REFERENCES else str(p) for p in b.references],
            "concurrency": self.config.concurrency,
            "mps": self.config.mps,
        }
        return {"search": search, "data": dict(self.data), "train": dict(self.train)}

    def study_dir(self, b: BudgetPlan) -> Path:
        return self.work / b.study


# A [[budgets]] entry: the budget, its references, and what may differ from one budget to the
# next (never between the two sides of one budget): the space, the search's length, and how
# many winners retrain for how many epochs.
_BUDGET_KEYS = (
    "budget",
    "references",
    "space",
    "trials",
    "timeout",
    "max_macs",
    "top",
    "retrain_epochs",
)


def load_campaign(
    path: Path, *, data: str | None, device: str | None, results: Path, out: Path | None
) -> Campaign:
    """Read and check a campaign preset; nothing is created."""
    raw = load_toml(path)
    tables = ("campaign", "budgets", "search", "data", "train", "retrain")
    for key in raw:
        if key not in tables:
            raise UserError(
                f"{path}: unknown table or key {key!r}; allowed: "
                + ", ".join(f"[{t}]" if t != "budgets" else "[[budgets]]" for t in tables)
            )
    for key in ("campaign", "search", "data", "train", "retrain"):
        if not isinstance(raw.get(key, {}), Mapping):
            raise UserError(f"{path}: {key!r} must be a table [{key}], but got {raw[key]!r}")
    config = from_mapping(CampaignConfig, raw.get("campaign", {}), where=f"{path} [campaign]")
    if device is not None:
        config = dataclasses.replace(config, device=device)
    name = config.name or path.stem
    if not is_name(name):
        raise UserError(
            f"{path} [campaign] name must be letters, digits, '.', '_' or '-' (it names "
            f"folders), but got {name!r}"
        )

    search = dict(raw.get("search", {}))
    owned = [k for k in OWNED_SEARCH_KEYS if k in search]
    if owned:
        raise UserError(
            f"{path} [search]: {', '.join(owned)} are set by the campaign (budget and "
            "references per [[budgets]] entry, device, concurrency and mps in [campaign]); "
            "remove them"
        )
    from_mapping(SearchConfig, search, where=f"{path} [search]")
    data_table = dict(raw.get("data", {}))
    if data is not None:
        data_table["source"] = data
    if "source" not in data_table:
        raise UserError(f"{path} [data] has no source: name the data (or pass --data)")
    from_mapping(DataConfig, data_table, where=f"{path} [data]")
    train = dict(raw.get("train", {}))
    from_mapping(TrainConfig, train, where=f"{path} [train]")

    retrain_raw = dict(raw.get("retrain", {}))
    own_keys = [f.name for f in dataclasses.fields(RetrainConfig)]
    train_keys = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in retrain_raw:
        if key not in own_keys and key not in train_keys:
            raise UserError(
                f"unknown key {key!r} in {path} [retrain]; allowed keys: "
                f"{', '.join(own_keys + train_keys)}"
            )
    retrain = from_mapping(
        RetrainConfig,
        {k: v for k, v in retrain_raw.items() if k in own_keys},
        where=f"{path} [retrain]",
    )
    retrain_train = {k: v for k, v in retrain_raw.items() if k in train_keys}
    from_mapping(TrainConfig, retrain_train, where=f"{path} [retrain]")

    entries = raw.get("budgets")
    if not isinstance(entries, list) or not entries:
        raise UserError(
            f"{path}: no [[budgets]] entries; give at least one, e.g. [[budgets]] budget = "
            '"400k", references = ["resnet20"]'
        )
    budgets = []
    for i, entry in enumerate(entries):
        where = f"{path} [[budgets]] #{i + 1}"
        budgets.append(_budget_plan(entry, where=where, name=name, search=search))
    labels = [b.label for b in budgets]
    if len(set(labels)) != len(labels):
        raise UserError(f"{path}: a budget appears twice in [[budgets]] ({', '.join(labels)})")
    return Campaign(
        name=name,
        preset=path,
        config=config,
        budgets=tuple(budgets),
        data=data_table,
        train=train,
        retrain=retrain,
        retrain_train=retrain_train,
        work=results / "campaigns" / name,
        out=out or results / "reference" / name,
    )


def _budget_plan(entry: Any, *, where: str, name: str, search: Mapping[str, Any]) -> BudgetPlan:
    if not isinstance(entry, Mapping):
        raise UserError(f"{where} must be a table, but got {entry!r}")
    for key in entry:
        if key not in _BUDGET_KEYS:
            raise UserError(f"unknown key {key!r} in {where}; allowed: {', '.join(_BUDGET_KEYS)}")
    if "budget" not in entry:
        raise UserError(f"{where} has no budget (400k, 5M, ...)")
    budget = parse_budget(entry["budget"])
    label = budget_label(budget)
    references = entry.get("references", [])
    if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
        raise UserError(
            f"{where}: references must be a list of names in configs/reference/ or TOML paths, "
            f"but got {references!r}"
        )
    if not references:
        raise UserError(
            f"{where} has no references: a campaign compares the search with hand-designed "
            'networks of the same budget; name at least one, e.g. references = ["resnet20"]'
        )
    paths = tuple(reference_path(r) for r in references)
    for p in paths:
        Genotype.load(p)  # a broken file is refused now, not after the search
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise UserError(f"{where}: a reference appears twice ({', '.join(stems)})")
    overrides = {k: entry[k] for k in ("space", "trials", "timeout", "max_macs") if k in entry}
    table = {**search, **overrides}
    from_mapping(SearchConfig, table, where=where)
    # The study is named after the campaign, and the budget unless the name already says it.
    study = name if label in name.lower().split("-") else f"{name}-{label}"
    top, epochs = entry.get("top"), entry.get("retrain_epochs")
    for key, value in (("top", top), ("retrain_epochs", epochs)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise UserError(f"{where}: {key} must be an integer >= 1, but got {value!r}")
    return BudgetPlan(budget, label, study, paths, table, top, epochs)
