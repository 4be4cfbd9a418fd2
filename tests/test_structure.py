"""The package's layers (ARCHITECTURE.md): which subpackage may import which, no import circle, empty
``__init__.py`` files, and no module left at the top beside the command-line entry."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "metakd_cli"

# what each layer may import, besides itself; the top (cli, __main__) may import anything
MAY_IMPORT = {
    "core": set(),
    "data": {"core"},
    "models": {"core", "data"},
    "training": {"core", "data", "models"},
    "ship": {"core", "data", "models"},
    "steps": {"core", "data", "models", "training", "ship"},
    "commands": {"core", "data", "models", "training", "ship", "steps"},
}
TOP = {"__init__", "__main__", "cli"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> set[str]:
    """Every metakd_cli module imported anywhere in a module (inside functions too), except under
    ``if TYPE_CHECKING:``; ``from metakd_cli.x import y`` counts ``metakd_cli.x.y`` when y is a module."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("metakd_cli"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("metakd_cli"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if _exists(candidate) else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _exists(module: str) -> bool:
    path = PACKAGE.parent / module.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        edges = {m for m in _imports(ast.parse(path.read_text(encoding="utf-8"))) if m != name}
        graph[name] = {m for m in edges if m != "metakd_cli"}  # `from metakd_cli import __version__`
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else (parts[1] if len(parts) == 2 and parts[1] in MAY_IMPORT else "top")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            strong(v)
    return found


def test_the_package_has_no_import_circle():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for module, imported in _graph().items():
        layer = _layer(module)
        if layer == "top":
            continue
        for other in imported:
            other_layer = _layer(other)
            if other_layer != layer and other_layer not in MAY_IMPORT[layer]:
                wrong.append(f"{module} ({layer}) imports {other} ({other_layer})")
    assert wrong == []


def test_an_import_under_type_checking_does_not_count():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from metakd_cli.steps import report\n"
                     "def f():\n    from metakd_cli.core import errors\n")
    assert _imports(tree) == {"metakd_cli.core.errors"}


def test_subpackages_are_one_level_deep_with_empty_init_files():
    for init in PACKAGE.rglob("__init__.py"):
        if init.parent == PACKAGE:
            continue
        assert init.parent.parent == PACKAGE, f"{init} is more than one level deep"
        assert init.read_text(encoding="utf-8") == "", f"{init} is not empty"
    layers = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert layers == set(MAY_IMPORT)


def test_only_the_entry_point_sits_at_the_top_of_the_package():
    assert {p.stem for p in PACKAGE.glob("*.py")} == TOP
