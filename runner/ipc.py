"""Messages from the driver process to the recorder process.

Each message is one length-prefixed frame (multiprocessing.Connection's wire format, so the
recorder reads it with `recv_bytes`) holding orjson `[kind, payload]`. The driver writes frames
through a non-blocking asyncio pipe transport: a slow recorder can never stall dispatch.
Records travel as positional lists in RAW_RECORD_FIELDS order (cheaper than dicts to build).
"""

from __future__ import annotations

import struct
from typing import Final

from veeksha.shared.records import DISPATCH_TRACE_FIELDS, MEASURED_FIELDS, REQUEST_TIME_FIELDS

START: Final = "start"  # {"t0": perf_counter at run start, "pid": driver pid}
BATCH: Final = "batch"  # {"records": [...], "trace": [...], "progress": {...}}
DRAINING: Final = "draining"  # {"in_flight": int, "up_to_s": float}: dispatch stopped, waiting
DONE: Final = "done"  # {"status", "stop_reason", "error", "cpu_seconds", "requests"}
FAILED: Final = "failed"  # {"message": one line}

# What the driver measures per request. Times are raw time.perf_counter() values; the recorder
# subtracts t0. `count_text` carries the generated text only when the server sent no usage, so
# the recorder (not the driver) can count its tokens.
RAW_RECORD_FIELDS: Final = (*MEASURED_FIELDS, "chunk_times", "count_text")
RAW_TIME_FIELDS: Final = REQUEST_TIME_FIELDS
# Trace lines: DISPATCH_TRACE_FIELDS, then "content" (None unless include_content).
RAW_TRACE_FIELDS: Final = (*DISPATCH_TRACE_FIELDS, "content")
RAW_TRACE_TIME_FIELDS: Final = ("scheduled_at", "ready_at", "dispatched_at")


def frame(payload: bytes) -> bytes:
    """multiprocessing.Connection framing: 4-byte big-endian signed length, then the bytes."""
    return struct.pack("!i", len(payload)) + payload
