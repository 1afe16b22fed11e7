"""The package's import graph has no circles, lazy imports (inside functions) included.

Read from the source with `ast`, so nothing is imported: every `import einsearch.x` and
`from einsearch.x import y` (y a module where einsearch/x/y.py exists) is an edge between modules.
A package's __init__ counts as the package's module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import einsearch

ROOT = Path(einsearch.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> list[tuple[str, bool]]:
    """(the einsearch module imported, whether the import is inside a function) for each import
    of an einsearch module in the file at `path`; `modules`: the package's module names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    in_functions = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import einsearch.a.b` names module a.b
                target = target.rpartition(".")[0]
            if target.startswith("einsearch") and target != name:
                found.append((target, id(node) in in_functions))
    return found


def package_modules() -> dict[str, Path]:
    """Every module of the package by name (a package's __init__ under the package's name)."""
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """module -> the einsearch modules it imports, anywhere in its body."""
    modules = package_modules()
    return {name: {target for target, _ in imports(path, set(modules))} for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_circles_finds_a_planted_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]


def test_the_graph_sees_lazy_and_relative_imports() -> None:
    graph = import_graph()
    assert "einsearch.arch" in graph["einsearch.build"]
    assert all(target.startswith("einsearch") for targets in graph.values() for target in targets)


def test_no_import_circles_inside_einsearch() -> None:
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)
