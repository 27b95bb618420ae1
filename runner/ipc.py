"""Messages between the recorder and its driver processes.

Driver → recorder: READY once set up, then START, BATCH..., DRAINING, DONE (or FAILED at any point).
Recorder → driver: one GO on a second pipe once every driver is READY, so that all drivers keep one
schedule from one common start.

Each driver → recorder message is one length-prefixed frame (multiprocessing.Connection's wire format, so the
recorder reads it with `recv_bytes`) holding orjson `[kind, payload]`. The driver writes frames
through a non-blocking asyncio pipe transport: a slow recorder can never stall dispatch.
Records travel as positional lists in RAW_RECORD_FIELDS order (cheaper than dicts to build), built
by keyword through `make_record` only, whose parameters are the field table's driver-side fields.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from veeksha.shared.records import DISPATCH_TRACE_FIELDS, DRIVER_FIELDS, REQUEST_TIME_FIELDS

READY: Final = "ready"  # {"pid": driver pid}: set up, sessions buffered, waiting for GO
START: Final = "start"  # {"t0": perf_counter at run start, "pid": driver pid}
BATCH: Final = "batch"  # {"records": [...], "trace": [...], "progress": {...}}
DRAINING: Final = "draining"  # {"in_flight": int, "up_to_s": float}: dispatch stopped, waiting
# {"status", "stop_reason", "error", "cpu_seconds", "cpu_steal_seconds", "num_cpus", "run_seconds",
#  "requests"}
DONE: Final = "done"
FAILED: Final = "failed"  # {"message": one line}
# From a Ray driver's actor, not its driver, last before the end of a stream its driver process cut
# short (killed): {"trace": raw trace lines} of the driver's ring file (driver/dispatch_ring.py),
# which may hold lines already shipped (the recorder keeps the ones past its last traced request).
UNSHIPPED: Final = "unshipped"

# What the driver ships per request (records.FIELDS, origins ID, MEASURED and TRANSPORT). Times are
# raw time.perf_counter() values; the recorder subtracts t0.
RAW_RECORD_FIELDS: Final = DRIVER_FIELDS
RAW_TIME_FIELDS: Final = REQUEST_TIME_FIELDS
# Trace lines: DISPATCH_TRACE_FIELDS, then "content" (None unless include_content).
RAW_TRACE_FIELDS: Final = (*DISPATCH_TRACE_FIELDS, "content")
RAW_TRACE_TIME_FIELDS: Final = ("scheduled_at", "ready_at", "dispatched_at")
TRACE_REQUEST_ID: Final = RAW_TRACE_FIELDS.index("request_id")  # where a raw trace line holds them
TRACE_CONTENT: Final = RAW_TRACE_FIELDS.index("content")


# GO (recorder → driver, a pickled dict on the go pipe): the common start. "t0" is the start on this
# host's monotonic clock (perf_counter; local drivers share it); a driver on another host has None
# there and converts "start_wall" (time.time()) to its own monotonic clock.
GO_T0: Final = "t0"
GO_START_WALL: Final = "start_wall"


def frame(payload: bytes) -> bytes:
    """multiprocessing.Connection framing: 4-byte big-endian signed length, then the bytes."""
    return struct.pack("!i", len(payload)) + payload


def unframe(data: bytes) -> list[bytes]:
    """The payloads of back-to-back frames (`frame`), up to one cut short (a crash mid-write)."""
    payloads = []
    at = 0
    while at + 4 <= len(data):
        (size,) = struct.unpack_from("!i", data, at)
        if size < 0 or at + 4 + size > len(data):
            break
        payloads.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return payloads


def make_trace_line(
    *,
    request_id: int,
    session_id: int,
    node_id: int,
    driver_id: int,
    session_size: int,
    scheduled_at: float,
    ready_at: float | None,
    dispatched_at: float | None,
    parent_nodes: tuple[int, ...],
    history_parent: int | None,
    wait_after_ready: float,
    is_warmup: bool,
    content: Any,
) -> list[Any]:
    """One dispatch trace line as the driver ships it: RAW_TRACE_FIELDS order (checked like make_record)."""
    return [
        request_id,
        session_id,
        node_id,
        driver_id,
        session_size,
        scheduled_at,
        ready_at,
        dispatched_at,
        parent_nodes,
        history_parent,
        wait_after_ready,
        is_warmup,
        content,
    ]


def make_record(
    *,
    request_id: int,
    session_id: int,
    node_id: int,
    driver_id: int,
    status: str,
    error_type: str | None,
    error_message: str | None,
    http_status: int | None,
    is_warmup: bool,
    session_size: int,
    scheduler_ready_at: float | None,
    scheduler_dispatched_at: float | None,
    client_picked_up_at: float | None,
    client_completed_at: float | None,
    result_processed_at: float | None,
    num_delta_prompt_tokens: int | None,
    num_total_prompt_tokens: int | None,
    target_num_delta_prompt_tokens: int | None,
    num_output_tokens: int | None,
    num_requested_output_tokens: int | None,
    num_cacheable_prompt_tokens: int | None,
    token_count_source: str | None,
    num_reasoning_tokens: int | None,
    reasoning_token_source: str | None,
    client_prompt_tokens: int | None,
    client_output_tokens: int | None,
    is_stream: bool,
    finish_reason: str | None,
    chunk_times: list[float],
    count_text: str | None,
    first_answer_at: float | None,
    last_answer_at: float | None,
    num_answer_chunks: int,
    reasoning_text: str | None,
) -> list[Any]:
    """One record as the driver ships it: RAW_RECORD_FIELDS order (tests/runner/test_ipc.py checks
    these parameters against the field table, so a field can be neither missed nor swapped)."""
    return [
        request_id,
        session_id,
        node_id,
        driver_id,
        status,
        error_type,
        error_message,
        http_status,
        is_warmup,
        session_size,
        scheduler_ready_at,
        scheduler_dispatched_at,
        client_picked_up_at,
        client_completed_at,
        result_processed_at,
        num_delta_prompt_tokens,
        num_total_prompt_tokens,
        target_num_delta_prompt_tokens,
        num_output_tokens,
        num_requested_output_tokens,
        num_cacheable_prompt_tokens,
        token_count_source,
        num_reasoning_tokens,
        reasoning_token_source,
        client_prompt_tokens,
        client_output_tokens,
        is_stream,
        finish_reason,
        chunk_times,
        count_text,
        first_answer_at,
        last_answer_at,
        num_answer_chunks,
        reasoning_text,
    ]
