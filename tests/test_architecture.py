"""The package's layers, as ARCHITECTURE.md draws them: a module imports only from its own
layer or those below, and no import cycle exists, counting imports inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mnist_ladder"
# Bottom to top. The top holds the public surface: `api`, the package itself, `__main__`, and
# the import paths step files use (`mnist_ladder.models`, `mnist_ladder.augment`).
LAYERS = ("core", "engine", "steps", "runs", "views", "apps", "top")


def module_name(path: Path) -> str:
    parts = ["mnist_ladder", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS[:-1] else len(LAYERS) - 1


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `module` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mnist_ladder")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("mnist_ladder"):
                base = node.module
            else:
                continue
            for a in node.names:  # `from . import x` imports the module x when there is one
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    found.discard(module)
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}


def test_the_layers_cover_the_package():
    top = {m for m in modules() if layer(m) == len(LAYERS) - 1}
    assert top == {
        "mnist_ladder",
        "mnist_ladder.__main__",
        "mnist_ladder.api",
        "mnist_ladder.models",
        "mnist_ladder.augment",
    }


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_upward_import(module):
    upward = sorted(m for m in graph()[module] if layer(m) > layer(module))
    assert not upward, f"{module} ({LAYERS[layer(module)]}) imports from above: {upward}"


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                return [*path[path.index(n) :], n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_what_they_are_for():
    """The two checks themselves: a cycle is found, an upward import is seen."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer("mnist_ladder.engine.train") < layer("mnist_ladder.runs.store")
    assert layer("mnist_ladder.api") == len(LAYERS) - 1
