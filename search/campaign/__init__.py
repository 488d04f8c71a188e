"""Prove it: search under a budget, retrain the search's choice beside hand-designed networks of
the same budget under the identical recipe, and write the comparison.

    python -m search.campaign --config configs/campaign/cpu-400k.toml

- ``preset``: the campaign preset, read and checked (nothing written);
- ``cli``: the command, its stages (search, retrain, report) and what each budget trains;
- ``log``: the wall time of every session and stage, kept across sessions;
- ``result``: the leaderboard, the verdict against the seed spread, the figure and the README.

Each depends only on those above it in this list (``result`` on ``preset`` and ``log``, ``cli``
on all three), so the package holds no import circle.
"""

from search.campaign.cli import build_parser, check_data, check_plans, main, plan_models, run_budget
from search.campaign.log import Log
from search.campaign.preset import (
    OWNED_SEARCH_KEYS,
    BudgetPlan,
    Campaign,
    CampaignConfig,
    RetrainConfig,
    load_campaign,
)
from search.campaign.result import load_study_if_any, planned_models, verdict, write_result

__all__ = [
    "OWNED_SEARCH_KEYS",
    "BudgetPlan",
    "Campaign",
    "CampaignConfig",
    "Log",
    "RetrainConfig",
    "build_parser",
    "check_data",
    "check_plans",
    "load_campaign",
    "load_study_if_any",
    "main",
    "plan_models",
    "planned_models",
    "run_budget",
    "verdict",
    "write_result",
]
