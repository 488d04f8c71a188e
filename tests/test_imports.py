"""The packages' modules import one another without a circle (top-level imports, type-only
ones included): each module can be read knowing only the ones it names."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("search", "space")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def top_level_imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports at module level (``if TYPE_CHECKING:`` included)."""
    tree = ast.parse(path.read_text())
    nodes: list[ast.stmt] = []
    for node in tree.body:
        nodes += node.body if isinstance(node, ast.If) else [node]
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in known:
                out.add(name)
    me = module_name(path)
    # A submodule's import of its own package (Python loads the parent first) is no dependency.
    return {m for m in out if m != me and not me.startswith(m + ".")}


def test_no_import_circle() -> None:
    found = modules()
    graph = {m: top_level_imports(p, set(found)) for m, p in found.items()}
    # a package that re-exports its submodules depends on them, not they on it
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                circles.append([*stack[stack.index(n) :], n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_campaign_package_has_no_circle_through_its_parts() -> None:
    found = modules()
    result = top_level_imports(found["search.campaign.result"], set(found))
    assert "search.campaign.cli" not in result and "search.campaign" not in result
