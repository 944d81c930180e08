"""The package's shape: no import cycle among instructkit's modules (at module level or inside
functions), no module that edits sys.path, and the shipped data files reachable as package data."""

from __future__ import annotations

import ast
import importlib.resources
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "instructkit"
SHIPPED = ("instruction-data.json", "seed_tasks.jsonl", "mt_bench_sample.jsonl")


def module_files() -> dict[str, Path]:
    """Every instructkit module by its dotted name; a package by its own name (its __init__.py)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The instructkit modules that `name` imports, anywhere in its source (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            # `from instructkit.pkg import name`: the module instructkit.pkg.name where there is one.
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            # `import instructkit.x.y` names a module; a name inside one counts as its module.
            while target and target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in modules and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that returns to its start, or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt, BLACK) == GREY:
                return stack[stack.index(nxt):] + [nxt]
            if colour.get(nxt) == WHITE and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = BLACK
        return None

    for start in sorted(graph):
        if colour[start] == WHITE and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_sees_imports_at_every_level(tmp_path):
    """Module-level, in-function, `import a.b`, `from a import module`, `from a.b import name` and
    relative imports all make edges; the package has edges at all (the check is not vacuous)."""
    modules = dict.fromkeys(["instructkit.errors", "instructkit.data", "instructkit.data.records",
                             "instructkit.judge.human", "instructkit.judge.scoring", "instructkit.runs.artifacts"])
    source = tmp_path / "scoring.py"
    source.write_text("import json\nimport instructkit.errors\nfrom instructkit.data import records\n"
                      "from . import human\nfrom ..runs.artifacts import read_json\n"
                      "def later():\n    from instructkit.data import packaged\n")
    assert imported_modules("instructkit.judge.scoring", source, modules) == {
        "instructkit.errors", "instructkit.data.records", "instructkit.judge.human", "instructkit.runs.artifacts",
        "instructkit.data"}
    graph = import_graph()
    assert "instructkit.errors" in graph and "instructkit.data" in graph
    assert sum(len(edges) for edges in graph.values()) > 20, graph
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_instructkit_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_edits_sys_path():
    pattern = re.compile(r"sys\.path\.(insert|append)\b")
    offenders = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                 for folder in (PACKAGE, ROOT / "bench") for path in sorted(folder.rglob("*.py"))
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if pattern.search(line)]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_data_is_reachable_as_package_data(name):
    assert importlib.resources.files("instructkit.data").joinpath("default", name).is_file()
