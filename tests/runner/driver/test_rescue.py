"""What a driver keeps for a recorder that may die, and the rescue file it writes once it has."""

from __future__ import annotations

import fcntl
from pathlib import Path

import orjson
import pytest
from veeksha.runner import ipc
from veeksha.runner.driver.rescue import KEEP_S, Rescue, StillWriting, read_frames


def batch(request_id: int, content: object = None) -> bytes:
    line = ipc.make_trace_line(
        request_id=request_id, session_id=0, node_id=0, driver_id=0, session_size=1, scheduled_at=1.0,
        ready_at=1.0, dispatched_at=1.0, parent_nodes=(), history_parent=None, wait_after_ready=0.0,
        is_warmup=False, content=content,
    )  # fmt: skip
    return ipc.frame(orjson.dumps([ipc.BATCH, {"records": [], "trace": [line], "progress": {}}]))


def start() -> bytes:
    return ipc.frame(orjson.dumps([ipc.START, {"t0": 5.0, "pid": 1}]))


def traced_ids(path: Path) -> list[int]:
    return [line[0] for kind, p in read_frames(path) if kind == ipc.BATCH for line in p["trace"]]


def test_the_start_and_what_the_recorder_may_not_have_written_are_rescued(tmp_path: Path) -> None:
    rescue = Rescue(str(tmp_path / "r"), pipe_bytes=1)
    rescue.open()
    rescue.kept(ipc.START, start(), 0, now=0.0)
    for k in range(10):  # one frame a second: the oldest are older than KEEP_S
        rescue.kept(ipc.BATCH, batch(k), 0, now=float(k))
    rescue.begin()
    rescue.write(batch(99))  # sent after the recorder died
    rescue.close()

    messages = read_frames(tmp_path / "r")
    assert messages[0] == (ipc.START, {"t0": 5.0, "pid": 1})  # kept however old: recovery needs t0
    kept = traced_ids(tmp_path / "r")
    assert kept[-1] == 99 and kept[:-1] == list(range(10 - int(KEEP_S) - 1, 10))


def test_frames_stay_kept_while_a_full_pipe_and_buffer_could_still_hold_them(tmp_path: Path) -> None:
    frame = batch(0)
    rescue = Rescue(str(tmp_path / "r"), pipe_bytes=10 * len(frame))
    rescue.open()
    for k in range(100):
        rescue.kept(ipc.BATCH, frame, buffered=5 * len(frame), now=100.0 + k)
    rescue.close()
    # Two pipes' worth (the pipe, and a recorder's read) plus the buffer, however old.
    assert len(rescue.recent) == 2 * 10 + 5


def test_rescued_trace_content_has_the_runs_secrets_scrubbed(tmp_path: Path) -> None:
    rescue = Rescue(str(tmp_path / "r"), pipe_bytes=1, secrets=["sk-rescued-7777"])
    rescue.open()
    rescue.begin()
    rescue.write(batch(1, [{"role": "assistant", "content": "you sent Bearer sk-rescued-7777"}]))
    rescue.close()
    text = (tmp_path / "r").read_bytes()
    assert b"sk-rescued" not in text and b"<redacted>" in text


def test_a_frame_cut_by_a_crash_ends_the_reading_and_a_held_file_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "r"
    path.write_bytes(start() + batch(1) + batch(2)[:-3])
    assert traced_ids(path) == [1]
    with path.open("ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # as its driver does until it ends
        with pytest.raises(StillWriting):
            read_frames(path)
