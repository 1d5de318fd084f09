"""The package's shape, drawn from the code: imports run one way, no cycles, modules stay small.

docs/architecture.md draws the layers; these tests keep the code to the drawing, so that a
newcomer following one event never meets an import that points back up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bridge"
MAX_MODULE_LINES = 450

# Leaves: modules everything may import; they import only each other.
LEAVES = {
    "bridge.errors",
    "bridge.forking",
    "bridge.outcome",
    "bridge.overflow",
    "bridge.safefs",
    "bridge.stats",
    "bridge.redaction",
    "bridge.streams",
    "bridge.diagnostics",
}
# (importer prefix, forbidden prefix, why)
FORBIDDEN = [
    ("bridge.delivery", "bridge.sinks", "the engine is below the sinks that use it"),
    ("bridge.delivery", "bridge.config", "the engine knows neither HTTP nor settings"),
    ("bridge.delivery", "bridge.formats", "formats reach the engine only through a transport"),
    ("bridge.delivery", "bridge.extension", "nothing imports the extension"),
    ("bridge.formats", "bridge.config", "a format knows only events"),
    ("bridge.formats", "bridge.delivery", "a format knows only events"),
    ("bridge.formats", "bridge.sinks", "a format knows only events"),
    ("bridge.sinks", "bridge.extension", "nothing imports the extension"),
    ("bridge.sinks", "bridge.emitter", "sinks take encoded lines, not events"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every bridge module `name` imports, anywhere in the file (a function-level import is
    still an arrow a reader must follow)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("bridge"):
                found.add(target)
    # Importing a submodule runs its package's __init__, which is not an arrow of its own.
    return {t for t in found if not name.startswith(t + ".")}


GRAPH = {name: imports_of(name) for name in MODULES}


def test_leaves_import_only_leaves() -> None:
    """errors, stats, forking, overflow, outcome ... import no module above them."""
    wrong = {
        (leaf, target)
        for leaf in LEAVES & GRAPH.keys()
        for target in GRAPH[leaf]
        if target not in LEAVES and target != "bridge"
    }
    assert set() == wrong


@pytest.mark.parametrize(("importer", "forbidden", "why"), FORBIDDEN)
def test_imports_run_one_way(importer: str, forbidden: str, why: str) -> None:
    """No arrow points back up the pipeline."""
    wrong = {
        (name, target)
        for name, targets in GRAPH.items()
        if name == importer or name.startswith(importer + ".")
        for target in targets
        if target == forbidden or target.startswith(forbidden + ".")
    }
    assert set() == wrong, why


def test_no_import_cycles() -> None:
    """No two modules import each other, directly or around a loop."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(GRAPH.get(node, ())):
            if target.startswith(node + "."):
                continue  # a package's __init__ re-exporting its own modules
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
    assert [] == cycles


def test_no_private_names_imported_across_modules() -> None:
    """A name another module needs is public; `_private` stays in its module."""
    wrong = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bridge"):
                wrong += [f"{name}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert [] == wrong


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small(name: str) -> None:
    """Every module stays readable in one sitting."""
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name}: {lines} lines"
