"""The search space: genotypes, the model builder, budgets and the search-space presets."""

from __future__ import annotations

from space._budget import (
    BudgetCheck,
    BudgetError,
    check,
    count,
    count_macs,
    count_params,
    fit_to_budget,
    format_count,
    parse_budget,
    scale_widths,
)
from space.builder import BLOCKS, Network, build
from space.errors import UserError
from space.genotype import Augment, Genotype, GenotypeError, Stage

__all__ = [
    "BLOCKS",
    "Augment",
    "BudgetCheck",
    "BudgetError",
    "Genotype",
    "GenotypeError",
    "Network",
    "Stage",
    "UserError",
    "build",
    "check",
    "count",
    "count_macs",
    "count_params",
    "fit_to_budget",
    "format_count",
    "parse_budget",
    "scale_widths",
]
