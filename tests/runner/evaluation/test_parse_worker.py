"""Parse workers and Ctrl-C: a terminal's reaches the whole process group, the workers too.

Real processes: a parent (PARENT below) starts the workers with parse_in_workers, as an evaluation
does, in a process group of its own (as a shell gives a command); the test Ctrl-Cs that group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runner.test_crash_recovery import started_at

from .factory import request, write_run

RECORDS = 300

# The Ctrl-C is the parent's to handle (veeksha-run's handler; here it does nothing). Told "stop",
# it ends its workers as an interrupted evaluation does (the blocks are closed: _stop); told
# anything else, it reads every block and prints how many records it got.
PARENT = """
import signal, sys
from pathlib import Path
from veeksha.runner.evaluation.blocks import block_ranges, id_kinds
from veeksha.runner.evaluation.parse_worker import parse_in_workers

path = Path(sys.argv[1])
signal.signal(signal.SIGINT, lambda signum, frame: None)
blocks, trace = parse_in_workers(2, path, id_kinds(path) or {}, block_ranges(path, 4096), None)
print("started", flush=True)
if sys.stdin.readline() == "stop\\n":
    next(blocks)
    blocks.close()
    print("stopped", flush=True)
else:
    print(sum(frame.height for frame, *_ in blocks), flush=True)
    trace()
"""


@pytest.fixture
def parent(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """PARENT on a run of RECORDS records in 4 KiB blocks (each worker's answers overfill its pipe:
    the workers are still there, waiting to write, until the parent reads or ends them)."""
    records = [request(i, sent=float(i), chunks=[i + 0.1, i + 0.2]) for i in range(RECORDS)]
    paths = write_run(tmp_path, records)
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(paths.request_records)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a command
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def worker_pids(parent: subprocess.Popen[str]) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
    return [int(c) for c in children if b"parse_worker" in Path(f"/proc/{c}/cmdline").read_bytes()]


def all_ended(pids: list[int], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while any(started_at(p) is not None for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return all(started_at(p) is None for p in pids)


def test_a_ctrl_c_while_the_workers_start_and_work_prints_no_traceback(parent: subprocess.Popen[str]) -> None:
    # Each worker printed a KeyboardInterrupt traceback and died, and the evaluation with it. The
    # first Ctrl-C comes while the workers start (import), the second while they wait to write.
    os.killpg(parent.pid, signal.SIGINT)
    time.sleep(1.0)
    os.killpg(parent.pid, signal.SIGINT)
    out, err = parent.communicate("go\n", timeout=60)
    assert parent.returncode == 0, err
    assert out == f"{RECORDS}\n"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_a_worker_ignoring_ctrl_c_ends_when_its_parent_stops_it(parent: subprocess.Popen[str]) -> None:
    pids = worker_pids(parent)
    assert len(pids) == 2
    os.killpg(parent.pid, signal.SIGINT)
    assert parent.stdin is not None and parent.stdout is not None
    parent.stdin.write("stop\n")
    parent.stdin.flush()
    assert parent.stdout.readline() == "stopped\n"
    assert all_ended(pids, within_s=0)  # _stop waits for them
    _, err = parent.communicate(timeout=60)
    assert parent.returncode == 0 and "Traceback" not in err, err


def test_a_worker_ignoring_ctrl_c_ends_when_its_parent_dies(parent: subprocess.Popen[str]) -> None:
    # Its tasks all sent and its stdin closed at the start, a worker ends once it finds its answers'
    # reader gone (a broken pipe), not on a signal.
    pids = worker_pids(parent)
    assert len(pids) == 2
    os.killpg(parent.pid, signal.SIGINT)
    time.sleep(0.5)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    assert all_ended(pids, within_s=30)
