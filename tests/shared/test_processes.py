"""shared/processes.py: which process a recorded pid (and start time) names."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from veeksha.shared.processes import is_running, own_lineage, process_start_ticks


def test_a_pid_with_its_start_time_names_one_process() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        started = process_start_ticks(proc.pid)
        assert started is not None
        assert is_running(proc.pid, started)
        assert is_running(proc.pid)  # the pid alone, for files that do not record the start
        assert not is_running(proc.pid, started + 1)  # a later process given the same pid
    finally:
        proc.kill()
        proc.wait()
    assert not is_running(proc.pid, started)


def test_an_exited_process_not_yet_reaped_is_not_running() -> None:
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while process_start_ticks(proc.pid) is not None and time.monotonic() < deadline:
        if Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.01)
    assert not is_running(proc.pid)
    proc.wait()


def test_the_asker_and_its_ancestors_are_never_the_process_named() -> None:
    assert {os.getpid(), os.getppid()} <= own_lineage()
    assert not is_running(os.getpid())
    assert not is_running(os.getppid())


def test_what_is_not_a_pid_names_no_process() -> None:
    for pid in (None, "123", True, 0, -1, 1.5):
        assert not is_running(pid)
