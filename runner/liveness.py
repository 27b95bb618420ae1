"""Is the process that writes a directory (a run, a sweep, a capacity search) still going?

Each names its process in its own file (run.json, sweep_manifest.json, capacity_search_results.json:
`host` and `pid`). On this host the process can be looked at; on another (a shared filesystem) it
cannot, and only the user can say it has ended (`veeksha-run evaluate --other-host-gone`).

A pid alone is reused: a restarted container gives its first process the same pid (often 1), and that
may be `veeksha-run evaluate` itself, whose command line names veeksha. So our own process and those
that started it are never taken for the owner. A file that also records when its process started
(`pid_start_ticks`: process_start_ticks of its pid) names that one process: one with the pid that
started at another time is another. A file without it is judged by the pid alone, as before.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veeksha.shared.errors import UsageError
from veeksha.shared.records import PID_START_TICKS

# The key beside `pid` that holds when that process started (process_start_ticks).
PID_START_KEY = PID_START_TICKS

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


def owner_fields() -> dict[str, Any]:
    """What a run, sweep or search records about its own process: host, pid and start ticks."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, PID_START_KEY: process_start_ticks(pid)}


def process_start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks after boot): with its pid, it names one process (a later
    one given the same pid started at another time). None when it cannot be read (no /proc)."""
    fields = _stat(pid)
    return int(fields[_STARTED]) if fields is not None and fields[_STARTED].isdigit() else None


def own_lineage() -> set[int]:
    """Our pid and those of the processes that started us, up to the first: none of them is the
    process a directory names (`evaluate` does not run inside a run, a sweep or a search)."""
    found: set[int] = set()
    pid = os.getpid()
    while pid > 0 and pid not in found:
        found.add(pid)
        fields = _stat(pid)
        pid = int(fields[_PARENT]) if fields is not None and fields[_PARENT].isdigit() else 0
    return found


def process_alive(pid: object, started: object = None) -> bool:
    """A live (not zombie) veeksha process with this pid on this host, other than ours or one of our
    ancestors; when `started` (its start ticks, as recorded) is known, one that started then."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0 or pid in own_lineage():
        return False
    fields = _stat(pid)
    if fields is None or fields[_STATE] == "Z":
        return False
    if isinstance(started, int) and not isinstance(started, bool) and fields[_STARTED] != str(started):
        return False  # the pid was given to another process since
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"veeksha" in cmdline


@dataclass(frozen=True)
class Owner:
    """The process that ran (or runs) a directory, as far as it can be told from here."""

    pid: object
    host: object
    started: object = None  # its start ticks, when the file records them

    @classmethod
    def named_in(cls, *infos: Any) -> Owner:
        """The first of these files' contents that names a process (older sweep manifests and search
        results did not; their runs' run.json do, as a sweep or search runs them in its own process)."""
        for info in infos:
            if isinstance(info, dict) and "pid" in info:
                return cls(info.get("pid"), info.get("host"), info.get(PID_START_KEY))
        return cls(None, None)

    @property
    def elsewhere(self) -> bool:
        """On another host (or unknown): its process cannot be looked at from here."""
        return self.host != socket.gethostname()

    @property
    def alive(self) -> bool:
        return not self.elsewhere and process_alive(self.pid, self.started)

    def may_be_running(self, what: str) -> str:
        """Why `what` is not marked crashed, and how the user says its process has ended. Older files
        name no host or pid: then nothing can be said of where it ran, only that it is not known."""
        if self.host is None:
            return (
                f"{what} may still be running: its process is not recorded; once it has ended, rerun "
                "with --other-host-gone to mark it crashed"
            )
        process = "its process id is not recorded" if self.pid is None else f"process {self.pid}"
        return (
            f"{what} may still be running on host {self.host!r} ({process}); once that process "
            "is gone, rerun with --other-host-gone to mark it crashed"
        )

    def check_ended(self, what: str, other_host_gone: bool, instead: str) -> None:
        """Before `veeksha-run evaluate` rewrites what this process writes: it has ended (or, on
        another host, the user says so). `instead` is what the user may do meanwhile."""
        if self.alive:
            raise UsageError(
                f"{what} is still running (process {self.pid}); wait for it to end (or stop it), or {instead}"
            )
        if self.elsewhere and not other_host_gone:
            raise UsageError(self.may_be_running(what))
