"""The ring file of a driver's latest dispatches: read back whole after the writer is gone, never a
torn entry, the newest entries when it has gone round, and no trace content on disk."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from veeksha.runner import ipc
from veeksha.runner.driver.dispatch_ring import ENTRY, HEADER, SLOT, SLOTS, DispatchRing, read_ring
from veeksha.runner.driver.dispatcher import Driver
from veeksha.runner.driver.http import transport

from tests.runner.driver.in_process import drive
from tests.runner.driver.test_dispatch import SINGLE, config, rate
from tests.runner.simserver.test_server import sim_server


def line(request_id: int, content: Any = None, parents: tuple[int, ...] = ()) -> list[Any]:
    """A raw trace line as read back (JSON: the driver's tuples are lists)."""
    return orjson.loads(
        orjson.dumps(
            ipc.make_trace_line(
                request_id=request_id,
                session_id=request_id // 2,
                node_id=request_id % 2,
                driver_id=0,
                session_size=2,
                scheduled_at=100.0 + request_id,
                ready_at=100.0 + request_id,
                dispatched_at=100.001 + request_id,
                parent_nodes=parents,
                history_parent=None,
                wait_after_ready=0.0,
                is_warmup=False,
                content=content,
            )
        )
    )


def written(path: Path, lines: list[list[Any]], t0: float | None = 99.0) -> DispatchRing:
    ring = DispatchRing(str(path))
    ring.open()
    if t0 is not None:
        ring.start(t0)
    for one in lines:
        ring.add(one)
    return ring


def test_lines_come_back_in_request_order_with_the_drivers_start(tmp_path: Path) -> None:
    written(tmp_path / "ring", [line(3), line(1), line(2)]).close()

    t0, lines = read_ring(tmp_path / "ring")

    assert t0 == 99.0
    assert lines == [line(1), line(2), line(3)]


def test_a_ring_survives_its_writer_being_killed(tmp_path: Path) -> None:
    """The point of the file: the kernel keeps a shared map's pages when the process dies."""
    path = tmp_path / "ring"
    script = textwrap.dedent(
        f"""
        import os, signal
        from veeksha.runner import ipc
        from veeksha.runner.driver.dispatch_ring import DispatchRing
        ring = DispatchRing({str(path)!r})
        ring.open()
        ring.start(5.0)
        for i in range(100):
            ring.add(ipc.make_trace_line(request_id=i, session_id=i, node_id=0, driver_id=0,
                session_size=1, scheduled_at=6.0, ready_at=6.0, dispatched_at=6.0 + i, parent_nodes=(),
                history_parent=None, wait_after_ready=0.0, is_warmup=False, content=None))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9, proc.stderr

    t0, lines = read_ring(path)

    assert t0 == 5.0
    assert [one[0] for one in lines] == list(range(100))


def test_a_driver_that_never_started_has_nothing_to_add(tmp_path: Path) -> None:
    written(tmp_path / "ring", [], t0=None).close()

    assert read_ring(tmp_path / "ring") == (None, [])
    assert read_ring(tmp_path / "missing") == (None, [])
    (tmp_path / "other").write_bytes(b"not a ring at all" * 10)
    assert read_ring(tmp_path / "other") == (None, [])


def test_an_entry_cut_short_by_a_kill_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    written(path, [line(1), line(2)]).close()
    with path.open("r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        at = HEADER + SLOT + ENTRY.size  # the second entry's payload, changed after its crc was taken
        mm[at : at + 1] = b"{"

    assert read_ring(path)[1] == [line(1)]


def test_the_newest_dispatches_are_kept_when_it_goes_round(tmp_path: Path) -> None:
    total = SLOTS + 500
    written(tmp_path / "ring", [line(i) for i in range(total)]).close()

    lines = read_ring(tmp_path / "ring")[1]

    ids = [one[0] for one in lines]
    assert ids[-1] == total - 1
    assert ids == list(range(total - len(ids), total))  # the latest, none missing among them
    assert len(ids) >= SLOTS - 1


def test_a_line_longer_than_a_slot_takes_several(tmp_path: Path) -> None:
    many_parents = tuple(range(200))  # a fan-in node: its line is ~900 bytes
    written(tmp_path / "ring", [line(1), line(2, parents=many_parents), line(3)]).close()

    assert read_ring(tmp_path / "ring")[1] == [line(1), line(2, parents=many_parents), line(3)]


def test_trace_content_never_reaches_the_file(tmp_path: Path) -> None:
    secret_prompt = {"messages": [{"role": "user", "content": "my key is SK-SECRET-1234"}]}
    written(tmp_path / "ring", [line(1, content=secret_prompt)]).close()

    assert b"SK-SECRET" not in (tmp_path / "ring").read_bytes()
    assert read_ring(tmp_path / "ring")[1] == [line(1)]


def test_a_ring_that_cannot_be_made_is_no_ring(tmp_path: Path) -> None:
    ring = written(tmp_path / "no-such-dir" / "ring", [line(1)])  # nothing raised: the run goes on

    assert ring.map is None
    ring.close()


def test_the_whole_file_is_allocated_at_the_start(tmp_path: Path) -> None:
    """A sparse file would meet a full disk as a SIGBUS inside a dispatch."""
    written(tmp_path / "ring", []).close()

    assert os.stat(tmp_path / "ring").st_blocks * 512 >= HEADER + SLOT * SLOTS


def test_a_ring_that_cannot_be_read_is_an_error_not_an_empty_ring(tmp_path: Path) -> None:
    """Recovery removes the file once it has read it: an unreadable ring taken for an empty one
    would lose its dispatches without a word."""
    (tmp_path / "ring").mkdir()  # (as root, a file without read permission is still readable)

    with pytest.raises(OSError):
        read_ring(tmp_path / "ring")


def test_the_ring_is_made_with_the_run_files_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        written(tmp_path / "ring", []).close()
    finally:
        os.umask(old)

    assert os.stat(tmp_path / "ring").st_mode & 0o777 == 0o644


def test_a_requests_ring_line_is_stored_before_its_bytes_are_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGKILL between the two must not leave the server a request no record will say was sent.
    When the request went out first (on an idle keep-alive connection, from inside `_fire`) and its
    ring line after it, a kill in between lost its record: once in a CI run of
    tests/runner/test_crash_recovery.py, 251 records for 252 requests the server had. Here every
    write of a request's bytes checks that the ring already holds a line for it."""
    ring_lines = 0
    writes: list[tuple[int, bool]] = []  # (ring lines stored before this write, written inside _fire)
    in_fire = False
    real_add, real_begin, real_fire = DispatchRing.add, transport._Connection.begin, Driver._fire

    def add(self: DispatchRing, line: list[Any]) -> None:
        nonlocal ring_lines
        ring_lines += 1
        real_add(self, line)

    def begin(self: transport._Connection, data: bytes, handler: Any) -> Any:
        writes.append((ring_lines, in_fire))
        return real_begin(self, data, handler)

    def fire(self: Driver, *args: Any, **kwargs: Any) -> None:
        nonlocal in_fire
        in_fire = True
        try:
            real_fire(self, *args, **kwargs)
        finally:
            in_fire = False

    monkeypatch.setattr(DispatchRing, "add", add)
    monkeypatch.setattr(transport._Connection, "begin", begin)
    monkeypatch.setattr(Driver, "_fire", fire)
    with sim_server(precise={"ttft": 0.01, "itl": 0.002}) as server:
        # 40/s of 30 ms requests: most find an idle keep-alive connection at their due time.
        run = drive(config(server.api_base, rate(40), SINGLE, max_sessions=40))

    assert len(run.records) == 40 and len(writes) == 40
    assert [n for n, (stored, _) in enumerate(writes, start=1) if stored < n] == []
    assert sum(inside for _, inside in writes) > 20  # the idle-connection sends this is about
