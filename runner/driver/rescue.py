"""What a driver sent its recorder lately, kept so that a recorder that dies loses none of it.

The recorder writes a driver's batches only some time after they were sent: they wait in the pipe
(drivers.PIPE_BYTES), in the driver's write buffer when the pipe is full, and in the recorder's
hands between a read and its write. A recorder killed mid-run took all of that with it, though the
server had those requests, and `evaluate` could not even tell they were sent (a black-box test lost
18-40 requests at 200 requests/s, and 487 after the recorder had been stopped for two seconds).

So a local driver keeps each frame it sent until it is KEEP_S old and more bytes than the pipe, its
own buffer and a recorder's read could hold were sent after it. Once it finds its recorder gone, it
writes the frames it kept, and every frame from then on, to a rescue file in the run directory;
`veeksha-run evaluate` merges that file (lost_records.recover). Per tick this is one append to a
deque: nothing per request.
"""

from __future__ import annotations

import fcntl
import os
from collections import deque
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson
from veeksha.runner import ipc
from veeksha.shared.paths import RunPaths
from veeksha.shared.redact import scrub_content

KEEP_S = 2.0  # a recorder that read a batch writes it within one round (recorder.RECEIVE_ROUND_S)
DEFAULT_PIPE_BYTES = 1 << 20


@dataclass(frozen=True)
class CrashFiles:
    """Where a driver leaves what a crash would lose: `rescue`, the frames its dead recorder did not
    write (this module; None for a Ray driver, whose recorder is on another host); `dispatches`, its
    latest dispatches, for its own SIGKILL (driver/dispatch_ring.py: in the run directory, or in its
    Ray actor's temporary directory on its node)."""

    rescue: str | None
    dispatches: str

    @classmethod
    def of(cls, paths: RunPaths, driver_id: int) -> CrashFiles:
        return cls(str(paths.driver_rescue(driver_id)), str(paths.driver_dispatches(driver_id)))


class Rescue:
    """The frames a driver sent lately; `begin` writes them, and later ones, to `path`."""

    def __init__(self, path: str | None, pipe_bytes: int, secrets: list[str] | None = None) -> None:
        self.path = path  # None: not on the recorder's host (Ray), nothing is kept
        # What may be in flight beyond the driver's buffer: a full pipe, and as much in the
        # recorder's hands (a round takes all that waits).
        self.keep_bytes = 2 * pipe_bytes
        self.secrets = secrets  # scrubbed from trace content, as the recorder does (None: no content)
        self.start: bytes | None = None  # the START frame: the driver's t0, which recovery needs
        self.recent: deque[tuple[float, bytes]] = deque()
        self.recent_bytes = 0
        self.file: BinaryIO | None = None
        self.active = False  # the recorder is gone: frames go to the file

    def open(self) -> None:
        """Made and locked at the driver's start, before it sends a request, and held until it ends:
        `evaluate` of a crashed run finds every driver's file, and waits while one still writes."""
        if self.path is None:
            return
        try:
            self.file = open(self.path, "ab", buffering=0)  # open until the driver ends
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX)
        except OSError:  # the run directory is gone: there is nowhere to rescue to
            self.close()

    def kept(self, kind: str, frame: bytes, buffered: int, now: float) -> None:
        """`frame` was handed to the pipe at `now`, with `buffered` bytes not yet in it."""
        if self.file is None:
            return
        if kind == ipc.START:
            self.start = frame
            return
        recent = self.recent
        recent.append((now, frame))
        self.recent_bytes += len(frame)
        keep = self.keep_bytes + buffered
        while now - recent[0][0] > KEEP_S and self.recent_bytes - len(recent[0][1]) >= keep:
            self.recent_bytes -= len(recent.popleft()[1])

    def begin(self) -> None:
        """The recorder is gone: write what was kept, and keep writing there (`write`)."""
        if self.file is None or self.active:
            return
        self.active = True
        kept = [self.start] if self.start is not None else []
        for frame in [*kept, *(frame for _, frame in self.recent)]:
            self.write(frame)
        self.recent.clear()

    def write(self, frame: bytes) -> None:
        if self.file is None:
            return
        if self.secrets:
            frame = _scrubbed(frame, self.secrets)
        try:
            view = memoryview(frame)
            while view:  # a short write (a nearly full disk) must not leave a cut frame mid-file
                view = view[self.file.write(view) or 0 :]
        except OSError:  # a full disk: what is written so far is what evaluate gets
            self.close()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()  # (and its lock)
            self.file = None
        self.active = False


def _scrubbed(frame: bytes, secrets: list[str]) -> bytes:
    """A frame whose trace content has `secrets` scrubbed (raw_lines.trace_line does it for the
    recorder; a rescued frame is merged without the run's secrets, which evaluate does not know)."""
    kind, payload = orjson.loads(frame[4:])
    if kind != ipc.BATCH or not any(line[ipc.TRACE_CONTENT] is not None for line in payload["trace"]):
        return frame
    for line in payload["trace"]:
        if line[ipc.TRACE_CONTENT] is not None:
            line[ipc.TRACE_CONTENT] = scrub_content(line[ipc.TRACE_CONTENT], secrets)
    return ipc.frame(orjson.dumps([kind, payload]))


def pipe_bytes(fd: int) -> int:
    """The room of the pipe behind `fd` (Linux), else drivers' default."""
    try:
        return int(fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ))
    except (OSError, AttributeError):
        return DEFAULT_PIPE_BYTES


class StillWriting(Exception):
    """A driver still writes this rescue file (its recorder died moments ago)."""


def read_frames(path: os.PathLike[str] | str) -> list[tuple[str, Any]]:
    """The `[kind, payload]` messages of a rescue file, up to a frame a crash cut short. Raises
    StillWriting while its driver lives."""
    with open(path, "rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StillWriting(str(path)) from None
        data = f.read()
    messages: list[tuple[str, Any]] = []
    for payload in ipc.unframe(data):
        try:
            kind, body = orjson.loads(payload)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            break
        messages.append((kind, body))
    return messages
