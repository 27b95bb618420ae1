"""Is the process that writes a directory (a run, a sweep, a capacity search) still going?

Each names its process in its own file (run.json, sweep_manifest.json, capacity_search_results.json:
`host` and `pid`). On this host the process can be looked at; on another (a shared filesystem) it
cannot, and only the user can say it has ended (`veeksha-run evaluate --other-host-gone`).

A pid alone is reused (a restarted container's first process may be `veeksha-run evaluate` itself,
whose command line names veeksha): shared/processes.py says which process a pid and its recorded
start time name. A file without the start time is judged by the pid alone, as before.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veeksha.shared.errors import UsageError
from veeksha.shared.processes import is_running, process_start_ticks
from veeksha.shared.records import PID_START_TICKS


def owner_fields() -> dict[str, Any]:
    """What a run, sweep or search records about its own process: host, pid and start ticks."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, PID_START_TICKS: process_start_ticks(pid)}


def process_alive(pid: object, started: object = None) -> bool:
    """A live veeksha process with this pid on this host, other than ours or one of our ancestors;
    when `started` (its start ticks, as recorded) is known, one that started then."""
    if not is_running(pid, started):
        return False
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
                return cls(info.get("pid"), info.get("host"), info.get(PID_START_TICKS))
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
