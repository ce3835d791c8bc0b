"""The layout holds: each package imports alone, imports point one way, no module-level cycles, no giant modules.

The rules are the ones each package's ``__init__`` docstring states (and docs/INTERNALS.md draws).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = [*sorted(p.parent for p in (ROOT / "proxy").glob("*/__init__.py")), ROOT / "inference"]

#: package -> project packages it must never import (anywhere in the module, deferred imports included).
FORBIDDEN: dict[str, set[str]] = {
    "proxy.s3": {"*"},
    "proxy.storage": {"proxy.front", "proxy.screening", "proxy.evidence", "proxy.jobs", "proxy.admin",
                      "proxy.demo", "proxy.commands", "proxy.federation", "proxy.integrations", "proxy.app",
                      "proxy.cli"},
    "proxy.evidence": {"proxy.front", "proxy.screening", "proxy.jobs", "proxy.admin", "proxy.demo",
                       "proxy.commands", "proxy.federation", "proxy.app", "proxy.cli"},
    "proxy.screening": {"proxy.front", "proxy.jobs", "proxy.admin", "proxy.demo", "proxy.commands", "proxy.app",
                        "proxy.cli"},
    "proxy.jobs": {"proxy.admin", "proxy.demo", "proxy.commands", "proxy.app", "proxy.cli"},
    "proxy.front": {"proxy.admin", "proxy.demo", "proxy.commands", "proxy.cli"},
    "proxy.admin": {"proxy.demo", "proxy.commands", "proxy.cli"},
    "inference": {"proxy.front", "proxy.screening", "proxy.evidence", "proxy.jobs", "proxy.admin", "proxy.demo",
                  "proxy.storage", "proxy.s3", "proxy.federation", "proxy.integrations"},
}
TOP_LEVEL_LEAVES = {"proxy.config", "proxy.config_sections", "proxy.state", "proxy.metrics", "proxy.logs"}
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_modules() -> dict[str, Path]:
    """Importable modules: files in package folders (data folders such as inference/data hold files that run
    elsewhere, e.g. inside MLServer)."""
    return {_module_name(p): p for top in ("proxy", "inference") for p in (ROOT / top).rglob("*.py")
            if (p.parent / "__init__.py").exists()}


def _imports(path: Path, *, module_level_only: bool) -> set[str]:
    """Project modules a file imports (TYPE_CHECKING blocks excluded: they never run)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            nested = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                if top or not module_level_only:
                    found.update(alias.name for alias in child.names)
            elif (isinstance(child, ast.ImportFrom) and child.module and child.level == 0
                  and (top or not module_level_only)):
                found.add(child.module)
                found.update(f"{child.module}.{alias.name}" for alias in child.names)
            visit(child, nested)

    visit(tree, True)
    return {name for name in found if name.split(".")[0] in ("proxy", "inference")}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: _module_name(p / "__init__.py"))
def test_each_package_imports_alone(package: Path) -> None:
    name = _module_name(package / "__init__.py")
    modules = sorted(_module_name(p) for p in package.rglob("*.py") if (p.parent / "__init__.py").exists())
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
    result = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert result.returncode == 0, f"{name} does not import alone:\n{result.stderr[-2000:]}"


def test_every_package_says_what_it_owns() -> None:
    for package in PACKAGES:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and len(doc) > 40, f"{package.name}/__init__.py needs a docstring: what it owns, what it may import"


def test_imports_point_one_way() -> None:
    modules = _project_modules()
    wrong = []
    for name, path in modules.items():
        imported = _imports(path, module_level_only=False)
        for package, forbidden in FORBIDDEN.items():
            if not _within(name, package):
                continue
            for target in imported:
                if _within(target, package):
                    continue
                if ("*" in forbidden and target.startswith("proxy")) or any(_within(target, f) for f in forbidden):
                    wrong.append(f"{name} -> {target}")
        if name in TOP_LEVEL_LEAVES:
            allowed = TOP_LEVEL_LEAVES | {"proxy.s3"}
            wrong.extend(f"{name} -> {t}" for t in imported
                          if t != "proxy" and not any(_within(t, ok) for ok in allowed))
    assert not wrong, "imports against the layout's direction:\n" + "\n".join(sorted(set(wrong)))


def test_no_module_level_import_cycles() -> None:
    modules = _project_modules()
    graph = {name: {t for t in _imports(path, module_level_only=True) if t in modules and t != name}
             for name, path in modules.items()}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def walk(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in graph[node]:
            if state.get(target) == 1:
                cycles.append(" -> ".join([*trail[trail.index(target):], target]) if target in trail else target)
            elif target not in state:
                walk(target, [*trail, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    # A package importing its own submodules from __init__ is not a cycle worth reporting.
    real = [c for c in cycles if len(set(c.split(" -> "))) > 1 and not all(
        _within(m, c.split(" -> ")[0]) or _within(c.split(" -> ")[0], m) for m in c.split(" -> "))]
    assert not real, "module-level import cycles:\n" + "\n".join(real)


def test_no_module_over_the_size_limit() -> None:
    big = {name: len(path.read_text().splitlines()) for name, path in _project_modules().items()}
    over = {name: lines for name, lines in big.items() if lines > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them by job): {over}"
