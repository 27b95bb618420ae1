"""A driver's latest dispatches in a memory-mapped file: what a SIGKILL of the driver cannot take.

A driver ships its trace lines to the recorder once per tick, and a frame waits in its write buffer
while the pipe is full (a recorder that fell behind). A driver killed with SIGKILL (the OOM killer,
`kill -9`) took those lines with it: the server had the requests, and no record said they were sent.
So each dispatch's trace line is also stored here, in a shared memory map of a file in the run
directory, whose pages the kernel keeps when the process dies. Whoever finds the driver dead (the
recorder, or `veeksha-run evaluate` after a crash) adds the lines it has not seen (`read_ring`).

Per dispatch this is one `orjson.dumps` and two stores into the map: no system call. The file is
allocated in full at the driver's start, so a full disk is found there, not as a SIGBUS mid-run.

Layout: a header (MAGIC, the driver's t0), then SLOTS slots of SLOT bytes. An entry takes one or
more consecutive slots, `[u32 length][u32 crc32][a raw trace line as JSON]`, written payload first,
so an entry a kill cut short fails its crc. Entries overwrite the oldest in turn; a reader keeps
every valid one and filters by request id.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from typing import Any

import orjson
from veeksha.runner import ipc

MAGIC = b"VKDRING1"
HEADER = 64  # MAGIC, then t0 (float64; NaN until the driver's start)
SLOT = 128  # a line without content is 80-120 bytes: one slot
SLOTS = 16384  # 2 MiB: twenty seconds of dispatches at 800 requests/s
ENTRY = struct.Struct("<II")  # payload length, crc32 of the payload
T0 = struct.Struct("<d")


class DispatchRing:
    """The ring a driver writes (`add` per dispatch); a no-op when `path` is None (a Ray driver, not
    on the recorder's host) or the file could not be made."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.map: mmap.mmap | None = None
        self.next = 0  # the slot the next entry starts at

    def open(self) -> None:
        if self.path is None:
            return
        size = HEADER + SLOT * SLOTS
        try:
            # Made like the run's other files (the umask decides): whoever may evaluate the run
            # must be able to read it.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        except OSError:
            return
        try:
            os.posix_fallocate(fd, 0, size)
            self.map = mmap.mmap(fd, size)
        except OSError:  # a full disk, or a filesystem that cannot map: run without it
            return
        finally:
            os.close(fd)  # the map keeps the file
        self.map[: len(MAGIC)] = MAGIC
        T0.pack_into(self.map, len(MAGIC), float("nan"))

    def start(self, t0: float) -> None:
        """The driver's common start on its own clock: what turns the lines' times into run times."""
        if self.map is not None:
            T0.pack_into(self.map, len(MAGIC), t0)

    def add(self, line: list[Any]) -> None:
        """Store one raw trace line (ipc.make_trace_line), without its content: the recorder's
        copy has it; here it would be a secret on disk and a slot too small."""
        mm = self.map
        if mm is None:
            return
        if line[ipc.TRACE_CONTENT] is not None:
            line = [*line[: ipc.TRACE_CONTENT], None, *line[ipc.TRACE_CONTENT + 1 :]]
        data = orjson.dumps(line)
        n = len(data)
        slots = (ENTRY.size + n + SLOT - 1) // SLOT
        start = self.next
        if start + slots > SLOTS:
            if slots > SLOTS:
                return
            start = 0
        at = HEADER + start * SLOT
        mm[at + ENTRY.size : at + ENTRY.size + n] = data
        ENTRY.pack_into(mm, at, n, zlib.crc32(data))
        self.next = (start + slots) % SLOTS

    def close(self) -> None:
        """The file stays: the recorder (or `evaluate`) removes it once the run's records are whole."""
        if self.map is not None:
            self.map.close()
            self.map = None


def read_ring(path: os.PathLike[str] | str) -> tuple[float | None, list[list[Any]]]:
    """The driver's t0 (None: it never started, so it sent nothing) and every whole entry's raw
    trace line, in request order. A file that exists but cannot be read raises OSError: taking it
    for an empty ring would lose its dispatches once recovery removes the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, []
    if not data.startswith(MAGIC) or len(data) < HEADER:
        return None, []
    (t0,) = T0.unpack_from(data, len(MAGIC))
    if t0 != t0:  # NaN
        return None, []
    lines: dict[int, list[Any]] = {}
    slot = 0
    end = min(SLOTS, (len(data) - HEADER) // SLOT)
    while slot < end:
        at = HEADER + slot * SLOT
        n, crc = ENTRY.unpack_from(data, at)
        payload = data[at + ENTRY.size : at + ENTRY.size + n]
        if 0 < n and len(payload) == n and zlib.crc32(payload) == crc:
            try:
                line = orjson.loads(payload)
            except orjson.JSONDecodeError:
                line = None
            if isinstance(line, list) and len(line) == len(ipc.RAW_TRACE_FIELDS):
                lines[line[ipc.TRACE_REQUEST_ID]] = line
                slot += (ENTRY.size + n + SLOT - 1) // SLOT
                continue
        slot += 1
    return t0, [lines[k] for k in sorted(lines)]
