"""The dependency rule of docs/architecture.md, checked on every module's imports.

fleet <- runtime <- roles (edge <- shield; purge_api; geo) <- cli, and demo beside the
roles on fleet alone. Imports inside functions count too: `cli` importing a role
lazily is still `cli` importing it, and a role importing `cli` lazily is still wrong.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: package -> the packages of ours it may import (itself always allowed)
ALLOWED: dict[str, set[str]] = {
    "fleet": set(),
    "runtime": {"fleet"},
    "edge": {"fleet", "runtime"},
    "shield": {"fleet", "runtime", "edge"},
    "purge_api": {"fleet", "runtime"},
    "geo": {"fleet", "runtime"},
    "demo": {"fleet"},
    "cli": {"fleet", "runtime", "edge", "shield", "purge_api", "geo", "demo"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level packages of ours that a module imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in ALLOWED)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    modules = sorted((REPO / package).rglob("*.py"))
    assert modules, f"no modules in {package}/"
    wrong = {
        str(path.relative_to(REPO)): sorted(imported - ALLOWED[package] - {package})
        for path in modules
        if (imported := imported_packages(path)) - ALLOWED[package] - {package}
    }
    assert wrong == {}


def test_edge_cache_imports_only_the_fleet_schema() -> None:
    for path in sorted((REPO / "edge" / "cache").rglob("*.py")):
        imported = imported_packages(path)
        assert imported <= {"edge", "fleet"}, path
