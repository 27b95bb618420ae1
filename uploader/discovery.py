"""Which directories an invocation uploads: run directories, sweeps, capacity searches, or a tree.

A sweep or capacity-search directory stands for its run directories plus one summary run. With
--recursive the walk stops at the first run or container directory on each branch and never enters
`wandb/` or hidden folders.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from veeksha.shared.errors import UsageError
from veeksha.shared.paths import RUN_JSON, WANDB_DIR
from veeksha.shared.userpath import expand_home
from veeksha.uploader.groups import (
    CAPSEARCH_SUMMARY,
    RUN,
    SWEEP_SUMMARY,
    capsearch_members,
    is_capsearch_dir,
    is_sweep_dir,
    sweep_members,
)
from veeksha.uploader.reader import is_run_dir


@dataclass(frozen=True)
class Target:
    kind: str  # RUN | SWEEP_SUMMARY | CAPSEARCH_SUMMARY
    path: Path  # absolute


def targets_of(path: Path) -> list[Target] | None:
    """The targets a directory stands for, or None when it is none of ours."""
    if is_run_dir(path):
        return [Target(RUN, path)]
    if is_sweep_dir(path):
        return [Target(RUN, m) for m in sweep_members(path)] + [Target(SWEEP_SUMMARY, path)]
    if is_capsearch_dir(path):
        return [Target(RUN, m) for m in capsearch_members(path)] + [Target(CAPSEARCH_SUMMARY, path)]
    return None


# Told of each folder a --recursive walk could not list (it may hold runs nobody uploads).
Unreadable = Callable[[Path, OSError], None]


def walk(top: Path, unreadable: Unreadable | None = None) -> list[Target]:
    found: list[Target] = []

    def cannot_list(e: OSError) -> None:
        if unreadable is not None and e.filename is not None:
            unreadable(Path(e.filename), e)

    for dirpath, dirnames, _ in os.walk(top, onerror=cannot_list):
        here = Path(dirpath)
        targets = targets_of(here)
        if targets is not None:
            found.extend(targets)
            dirnames.clear()
            continue
        dirnames[:] = sorted(d for d in dirnames if d != WANDB_DIR and not d.startswith("."))
    return found


def discover(paths: list[str], recursive: bool, unreadable: Unreadable | None = None) -> list[Target]:
    """Targets for the PATH arguments, deduplicated, in path order. Bad paths are usage errors;
    `unreadable` is told of each folder a recursive walk could not list."""
    if not paths:
        raise UsageError("give at least one PATH (a run, sweep or capacity-search directory)")
    found: dict[tuple[str, Path], Target] = {}
    for text in paths:
        path = expand_home(text, "PATH")
        if not path.exists():
            raise UsageError(f"{text}: no such directory")
        if not path.is_dir():
            raise UsageError(f"{text}: not a directory")
        path = path.resolve()
        targets = walk(path, unreadable) if recursive else targets_of(path)
        if targets is None:
            raise UsageError(
                f"{text}: not a run, sweep or capacity-search directory (no {RUN_JSON}); "
                "use --recursive to search a tree"
            )
        for t in targets:
            found[(t.kind, t.path)] = t
    return sorted(found.values(), key=lambda t: (str(t.path), t.kind))
