"""A driver's raw lines made into the run directory's lines: times on the run's clock, written as
every time in the directory is (docs/metrics.md: rounded to whole nanoseconds)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from veeksha.runner import ipc
from veeksha.runner.raw_lines import record_line, trace_line

from tests.runner.evaluation.factory import raw_record

T0 = 5123.456789123457  # a driver's perf_counter at the run start
AT = T0 + 1.234567890123  # a time on that clock: AT - T0 has more than 9 decimals in binary


def raw_trace(at: float) -> list[Any]:
    return ipc.make_trace_line(
        request_id=0,
        session_id=0,
        node_id=0,
        driver_id=0,
        session_size=1,
        scheduled_at=at,
        ready_at=at,
        dispatched_at=at,
        parent_nodes=(),
        history_parent=None,
        wait_after_ready=0.0,
        is_warmup=False,
        content=None,
    )


def raw_record_list(at: float) -> list[Any]:
    fields = {
        **dict.fromkeys(ipc.RAW_RECORD_FIELDS),
        **raw_record(scheduler_ready_at=at, scheduler_dispatched_at=at, client_picked_up_at=at),
        "client_completed_at": at + 1.0,
        "result_processed_at": at + 1.0,
        "chunk_times": [at + 0.5, at + 1.0],
        "num_answer_chunks": 0,
    }
    return [fields[name] for name in ipc.RAW_RECORD_FIELDS]


def decimals(value: float) -> int:
    return -int(Decimal(repr(value)).as_tuple().exponent)


def test_trace_times_are_rounded_to_whole_nanoseconds_as_the_record_times_are() -> None:
    assert decimals(AT - T0) > 9  # what the subtraction alone leaves
    line = trace_line(raw_trace(AT), T0, [])
    record = record_line(raw_record_list(AT), T0, lambda text: 0)
    assert all(decimals(line[name]) <= 9 for name in ipc.RAW_TRACE_TIME_FIELDS)
    # The trace and the record of one request agree on its times, to the nanosecond.
    assert line["ready_at"] == record["scheduler_ready_at"]
    assert line["dispatched_at"] == record["scheduler_dispatched_at"]
