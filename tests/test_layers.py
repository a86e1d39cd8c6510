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


def imported_modules(path: Path) -> set[str]:
    """The modules of ours that a module imports, by full dotted name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in ALLOWED}


def test_edge_cache_imports_only_the_fleet_schema_and_the_purge_wire() -> None:
    # the purge record is pure data shared with the purge API (runtime.purge_wire);
    # nothing else of runtime (processes, aiohttp glue) may reach the I/O-free policy
    for path in sorted((REPO / "edge" / "cache").rglob("*.py")):
        modules = imported_modules(path)
        assert {m.split(".")[0] for m in modules} <= {"edge", "fleet", "runtime"}, path
        assert {m for m in modules if m.startswith("runtime")} <= {"runtime.purge_wire"}, path
        edge = {m for m in modules if m.split(".")[0] == "edge"}
        assert all(m.startswith("edge.cache") for m in edge), path


def test_the_purge_wire_imports_nothing_of_ours() -> None:
    assert imported_modules(REPO / "runtime" / "purge_wire.py") == set()
