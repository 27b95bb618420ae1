"""The runner never imports wandb; the uploader never imports the runner (overview.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imported_modules(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
    return names


@pytest.mark.parametrize("folder", ["runner", "shared"])
def test_runner_and_shared_never_import_wandb(folder: str) -> None:
    assert not {m for m in imported_modules(REPO / folder) if m.split(".")[0] == "wandb"}


def test_uploader_never_imports_the_runner() -> None:
    assert not {m for m in imported_modules(REPO / "uploader") if m.startswith("veeksha.runner")}


def test_shared_imports_neither_side() -> None:
    mods = imported_modules(REPO / "shared")
    assert not {m for m in mods if m.startswith(("veeksha.runner", "veeksha.uploader"))}
