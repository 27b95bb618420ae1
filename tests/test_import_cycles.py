"""No import cycles between Veeksha's modules, lazy (in-function) imports included, and the boundaries
between the parts hold: the driver loads no evaluation, uploader or analysis code, the uploader never
imports the runner, and the runner never imports wandb.

A cycle hidden by a lazy import still ties two modules into one unit that cannot be read, tested or
moved apart; the graph here is built from the source, so a lazy import counts like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"runner": "veeksha.runner", "uploader": "veeksha.uploader", "shared": "veeksha.shared"}
SEED_ENTRY = ("runner/seed_entry", "veeksha.benchmark")


def module_files() -> dict[str, Path]:
    """Module name -> file, following pyproject's package-dir mapping."""
    out: dict[str, Path] = {}
    roots = [(REPO / folder, pkg) for folder, pkg in PACKAGES.items()]
    roots.append((REPO / SEED_ENTRY[0], SEED_ENTRY[1]))
    for root, pkg in roots:
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if pkg == "veeksha.runner" and parts and parts[0] == "seed_entry":
                continue
            out[".".join([pkg, *parts])] = path
    return out


def imported_names(path: Path) -> list[str]:
    """Every module name a file imports, at the top or inside a function."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [f"{node.module}.{a.name}" for a in node.names] + [node.module]
    return names


def third_party(path: Path) -> set[str]:
    """Top-level names of the packages a file imports that are not ours."""
    return {n.partition(".")[0] for n in imported_names(path)} - {"veeksha"}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for target in imported_names(path):
            # `from pkg import mod` imports the submodule; `from mod import name` the module.
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        if v not in seen:
            seen.add(v)
            todo.extend(graph.get(v, ()))
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, each sorted, in sorted order.

    Two modules share a component when each reaches the other; with a few dozen modules, taking
    every module's reachable set is cheap and plainer than Tarjan's algorithm.
    """
    reach = {v: reachable(graph, v) for v in graph}
    groups = {frozenset(w for w in reach[v] if v in reach[w]) for v in graph}
    return sorted(sorted(group) for group in groups if len(group) > 1)


def test_the_graph_sees_lazy_imports() -> None:
    graph = import_graph()
    assert "veeksha.runner.benchmark" in graph and len(graph) > 40
    # benchmark.py imports evaluation inside a function: it must still be an edge.
    assert any(m.startswith("veeksha.runner.evaluation") for m in graph["veeksha.runner.benchmark"])


def test_there_are_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def in_package(graph: dict[str, set[str]], package: str) -> list[str]:
    found = [m for m in graph if m == package or m.startswith(package + ".")]
    assert found, package
    return found


def test_the_driver_never_loads_evaluation_or_uploader_code() -> None:
    graph = import_graph()
    for driver in in_package(graph, "veeksha.runner.driver"):
        loaded = reachable(graph, driver)
        assert not {m for m in loaded if m.startswith("veeksha.runner.evaluation")}, driver
        assert not {m for m in loaded if m.startswith("veeksha.uploader")}, driver


def test_the_driver_loads_no_analysis_or_upload_library() -> None:
    """Its hot path shares the core with nothing it does not need: no dataframes, plots or W&B."""
    graph, files = import_graph(), module_files()
    for driver in in_package(graph, "veeksha.runner.driver"):
        used = set().union(*(third_party(files[m]) for m in reachable(graph, driver)))
        assert not used & {"polars", "numpy", "matplotlib", "wandb"}, driver


def test_the_uploader_never_imports_the_runner() -> None:
    """It runs on hosts that upload only; the output directory (shared.paths) is the contract."""
    graph = import_graph()
    for module in in_package(graph, "veeksha.uploader"):
        assert not {m for m in reachable(graph, module) if m.startswith("veeksha.runner")}, module


def test_the_runner_never_imports_wandb() -> None:
    """Load machines may be air-gapped: the runner writes files, the uploader talks to W&B."""
    files = module_files()
    for module in in_package(import_graph(), "veeksha.runner"):
        assert "wandb" not in third_party(files[module]), module
