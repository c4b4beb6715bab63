"""The package's layers: imports point one way (errors <- core <- {pipeline, jsonl} <- executors
<- testing <- cli), no import circles, and the core stays standard library only.

Every import counts: at module level, inside functions (lazy) and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "choreo_cli"

# A module's layer is its subpackage, or its own name for a top-level module.
RANK = {
    "errors": 0,
    "version": 0,
    "lazy": 0,
    "core": 1,
    "pipeline": 2,
    "jsonl": 2,
    "executors": 3,
    # `choreo test`: test files, running them through the pipeline and executors, --update.
    "testing": 4,
    "cli": 5,
    # The public face: the package's lazy exports, the old `choreo_cli.records` name and
    # `python -m choreo_cli`. Nothing inside the layers may import them.
    "choreo_cli": 6,
    "records": 6,
    "__main__": 6,
}
# Same rank, different concern: never import each other.
APART = {frozenset({"pipeline", "jsonl"})}
# Third-party packages and the layers allowed to import them.
THIRD_PARTY = {
    "yaml": {"pipeline", "testing", "cli"},
    "ruamel": {"testing"},
    "jsonschema": {"pipeline", "testing", "cli"},
    "orjson": {"jsonl", "executors", "testing", "cli"},
    "typer": {"cli"},
    "click": {"cli"},
    "rich": {"cli"},
    "dask": {"executors"},
    "distributed": {"executors"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "choreo_cli"


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every module ``path`` imports (absolute names), with the line: lazy and
    TYPE_CHECKING imports included."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            # `from choreo_cli.core import event_loop` imports the module event_loop (a
            # package's __init__ runs for any of its modules: it is no edge of its own).
            submodules = [
                f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}")
            ]
            if len(submodules) < len(node.names):
                yield target, node.lineno
            for submodule in submodules:
                yield submodule, node.lineno


def _is_module(name: str) -> bool:
    if not name.startswith("choreo_cli"):
        return False
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    return (PACKAGE / relative).with_suffix(".py").is_file() or (
        PACKAGE / relative / "__init__.py"
    ).is_file()


def graph() -> dict[str, list[tuple[str, int]]]:
    edges: dict[str, list[tuple[str, int]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        edges[module_name(path)] = list(imports(path))
    return edges


GRAPH = graph()


def test_the_scan_sees_the_package() -> None:
    assert {
        "choreo_cli.core.coordinator",
        "choreo_cli.cli.entry",
        "choreo_cli.jsonl.writer",
    } <= set(GRAPH)
    # A lazy import inside a function is seen (the executors load the pipeline in workers).
    runner = [name for name, _ in GRAPH["choreo_cli.executors.runner"]]
    assert "choreo_cli.pipeline.loader" in runner


def test_every_module_belongs_to_a_layer() -> None:
    assert sorted(m for m in GRAPH if layer(m) not in RANK) == []


def violations(edges: dict[str, list[tuple[str, int]]]) -> list[str]:
    found = []
    for module, targets in edges.items():
        own = layer(module)
        for target, line in targets:
            where = f"{module} (line {line}) imports {target}"
            if target.startswith("choreo_cli"):
                other = layer(target)
                if other == own:
                    continue
                if frozenset({own, other}) in APART:
                    found.append(f"{where}: {own} and {other} never import each other")
                elif RANK[other] > RANK[own] or (RANK[other] == RANK[own] and own != "choreo_cli"):
                    found.append(f"{where}: {own} may not import {other}")
            else:
                top = target.split(".")[0]
                allowed = THIRD_PARTY.get(top)
                if allowed is not None and own not in allowed and RANK[own] < RANK["choreo_cli"]:
                    found.append(f"{where}: only {sorted(allowed)} may import {top}")
    return found


def test_imports_point_one_way() -> None:
    assert violations(GRAPH) == []


def cycles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target, _ in edges.get(node, []):
            if target not in edges or target == node:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles() -> None:
    # A package's own __init__ importing its modules lazily is not a circle of concern
    # when the modules do not import the __init__ back: they never do here.
    assert cycles(GRAPH) == []


def test_the_core_never_touches_the_standard_streams() -> None:
    touched = []
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and (
                    (
                        node.value.id == "sys"
                        and node.attr.strip("_") in {"stdin", "stdout", "stderr", "exit"}
                    )
                    or (node.value.id == "os" and node.attr in {"dup2", "_exit"})
                    or (node.value.id == "signal" and node.attr == "signal")
                )
            ):
                touched.append(
                    f"{module_name(path)} line {node.lineno}: {node.value.id}.{node.attr}"
                )
    assert touched == []


@pytest.mark.parametrize(
    ("module", "target", "message"),
    [
        (
            "choreo_cli.core.coordinator",
            "choreo_cli.pipeline.loader",
            "core may not import pipeline",
        ),
        ("choreo_cli.core.compiled", "choreo_cli.jsonl.writer", "core may not import jsonl"),
        ("choreo_cli.core.workers", "choreo_cli.executors.base", "core may not import executors"),
        ("choreo_cli.core.result", "choreo_cli.cli.console", "core may not import cli"),
        ("choreo_cli.pipeline.reader", "choreo_cli.jsonl.reader", "never import each other"),
        ("choreo_cli.core.compiled", "orjson", "may import orjson"),
        ("choreo_cli.core.step", "yaml", "may import yaml"),
        ("choreo_cli.executors.base", "rich", "may import rich"),
        ("choreo_cli.core.calling", "typer", "may import typer"),
    ],
)
def test_the_check_fails_for_a_wrong_import(module: str, target: str, message: str) -> None:
    edges = {module: [(target, 1)]}
    found = violations(edges)
    assert len(found) == 1 and message in found[0]


def test_the_check_finds_a_circle() -> None:
    edges = {
        "choreo_cli.core.a": [("choreo_cli.core.b", 1)],
        "choreo_cli.core.b": [("choreo_cli.core.c", 1)],
        "choreo_cli.core.c": [("choreo_cli.core.a", 1)],
    }
    assert cycles(edges) == [["choreo_cli.core.a", "choreo_cli.core.b", "choreo_cli.core.c"]]
