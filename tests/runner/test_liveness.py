"""runner/liveness.py: what is said of a directory whose process cannot be looked at from here."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from veeksha.runner.liveness import Owner
from veeksha.shared.processes import process_start_ticks


@pytest.mark.parametrize(
    ("owner", "said"),
    [
        (
            Owner(4242, "elsewhere"),
            "sweep s may still be running on host 'elsewhere' (process 4242); once that process is gone, "
            "rerun with --other-host-gone to mark it crashed",
        ),
        (
            Owner.named_in({}, {"status": "running"}),  # older files that name no process
            "sweep s may still be running: its process is not recorded; once it has ended, rerun with "
            "--other-host-gone to mark it crashed",
        ),
        (
            Owner(None, "elsewhere"),
            "sweep s may still be running on host 'elsewhere' (its process id is not recorded); once that "
            "process is gone, rerun with --other-host-gone to mark it crashed",
        ),
    ],
    ids=["known", "unknown", "host-only"],
)
def test_may_be_running_names_what_is_known_of_the_process(owner: Owner, said: str) -> None:
    assert owner.may_be_running("sweep s") == said


@pytest.fixture
def veeksha_named() -> Iterator[int]:
    """A live process whose command line names veeksha, as a runner's does. Looked at once it has
    said so: in the middle of its exec (a loaded CI caught one there) its command line reads empty."""
    code = "import time; print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, "veeksha-run"], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    yield proc.pid
    proc.kill()
    proc.wait()
    proc.stdout.close()


def test_a_recorded_start_time_tells_the_process_from_a_later_one_given_its_pid(veeksha_named: int) -> None:
    here = socket.gethostname()
    started = process_start_ticks(veeksha_named)
    assert started is not None
    assert Owner(veeksha_named, here, started).alive
    assert not Owner(veeksha_named, here, started - 1).alive  # the pid was given to another since
    assert Owner(veeksha_named, here).alive  # a file without the start time: the pid alone
    assert Owner.named_in({"pid": veeksha_named, "host": here, "pid_start_ticks": started + 1}) == Owner(
        veeksha_named, here, started + 1
    )


# Run with "veeksha" in its own command line and in its parent's (a shell's $0).
_LINEAGE = (
    "import os; from veeksha.runner.liveness import process_alive; "
    "print(process_alive(os.getpid()), process_alive(os.getppid()))"
)


def test_our_own_process_and_its_parents_are_never_taken_for_the_owner() -> None:
    """A restarted container gives `evaluate` (or the shell that started it) the pid a killed sweep
    recorded; both name veeksha, and the sweep was "still running" for ever."""
    proc = subprocess.run(
        ["bash", "-c", '"$1" -c "$2"; true', "veeksha-shell", sys.executable, _LINEAGE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.split() == ["False", "False"], proc.stdout + proc.stderr
