from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

# One thread per process: the tests' networks are tiny, and several test processes (search
# workers) share two cores; oversubscribed OpenMP threads spin and slow everything down.
# Set before torch is imported, so subprocesses inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

REFERENCES = sorted((ROOT / "configs" / "reference").glob("*.toml"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _required_markers() -> set[str]:
    """Markers named in NAS_REQUIRE ("browser,postgres" in CI): their tests must run."""
    return {m.strip() for m in os.environ.get("NAS_REQUIRE", "").split(",") if m.strip()}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # A test skips when what it drives is missing (Chromium, a PostgreSQL server). Where
    # NAS_REQUIRE names its marker, that machine is meant to have it: a skip there would hide
    # a broken install behind a green run, so it is reported as a failure instead.
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        required = sorted(_required_markers() & {m.name for m in item.iter_markers()})
        if required:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            report.outcome = "failed"
            report.longrepr = (
                f"skipped, but NAS_REQUIRE={','.join(sorted(_required_markers()))} requires "
                f"the {', '.join(required)} tests to run: {reason}"
            )
    return report
