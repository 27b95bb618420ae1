"""Which process a file names: a pid, and when that process started.

A pid alone is reused: a restarted container gives its first process the same pid (often 1), which
may be the very process asking. So the asker and the processes that started it are never taken for
the one named, and a file that also records its process's start time (`pid_start_ticks`, clock
ticks after boot from /proc/<pid>/stat) names exactly one process: one with that pid that started
at another time is another. The runner (runner/liveness.py) and the uploader's follower
(uploader/follow.py) both judge by these rules.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

# Fields of /proc/<pid>/stat after the command name: state is the stat's 3rd field, the parent's
# pid its 4th, the start time its 22nd (proc(5)).
_STATE, _PARENT, _STARTED = 0, 1, 19


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses:
    cut at the last ')'); None when there is no such process or it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > _STARTED else None


def process_start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks after boot): with its pid, it names one process (a later
    one given the same pid started at another time). None when it cannot be read (no /proc)."""
    fields = _stat(pid)
    return int(fields[_STARTED]) if fields is not None and fields[_STARTED].isdigit() else None


def own_lineage() -> set[int]:
    """Our pid and those of the processes that started us, up to the first: none of them is the
    process a file names (neither `evaluate` nor the follower runs inside the run it looks at)."""
    found: set[int] = set()
    pid = os.getpid()
    while pid > 0 and pid not in found:
        found.add(pid)
        fields = _stat(pid)
        pid = int(fields[_PARENT]) if fields is not None and fields[_PARENT].isdigit() else 0
    return found


def is_running(pid: object, started: object = None, *, not_these: Collection[int] | None = None) -> bool:
    """A live (not zombie) process with this pid on this host, other than those in `not_these` (by
    default ours and our ancestors'); when `started` (its start ticks, as recorded) is known, one that
    started then."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    if pid in (own_lineage() if not_these is None else not_these):
        return False
    fields = _stat(pid)
    if fields is None or fields[_STATE] == "Z":
        return False
    return not (
        isinstance(started, int) and not isinstance(started, bool) and fields[_STARTED] != str(started)
    )
