"""The package is layered: no module imports one that (directly or not) imports it back.

Every module also says its one concept in a docstring and stays under ~400 lines (past that it
holds two concepts: split it).

Each module's own imports of `qubico_async` modules are read from its source (module level and
inside functions alike; imports under `if TYPE_CHECKING:` are left out, they never run). The graph
they form must have no cycle, so every module sits on a layer below the ones that use it, and the
client facade is used only by the entry points (the package root, the CLIs, the demo and the
framework integrations), never by what it composes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import qubico_async

PACKAGE = Path(qubico_async.__file__).parent
ENTRY_POINTS = {
    "qubico_async",
    "qubico_async.__main__",
    "qubico_async.cli",
    "qubico_async._batch_cli",
    "qubico_async._demo",
    "qubico_async.integrations.fastapi",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules that `path` imports when it runs."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := walk(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert "qubico_async.errors" in graph["qubico_async.client"]
    assert "qubico_async.client" in graph["qubico_async"]
    assert set(graph) >= ENTRY_POINTS, sorted(ENTRY_POINTS - set(graph))


def test_no_module_imports_back_up() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_is_found() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_only_entry_points_use_the_client() -> None:
    users = {name for name, targets in import_graph().items() if "qubico_async.client" in targets}
    assert users <= ENTRY_POINTS, sorted(users - ENTRY_POINTS)


MAX_LINES = 400


def test_every_module_says_its_concept_and_stays_small() -> None:
    paths = sorted(PACKAGE.rglob("*.py"))
    assert len(paths) > 40  # the whole package is read
    undocumented = [str(p) for p in paths if not ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")))]
    assert not undocumented, undocumented
    large = {
        str(p.relative_to(PACKAGE)): n
        for p in paths
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not large, large
