"""The driver → recorder record: built by keyword through one function whose parameters are the
field table's driver-side fields, so a missed or swapped field fails here, not silently in a run."""

from __future__ import annotations

import inspect

from veeksha.runner import ipc
from veeksha.shared.records import DRIVER_FIELDS, FIELD, MEASURED_FIELDS, TRANSPORT


def test_make_record_parameters_are_the_driver_fields_in_order():
    params = inspect.signature(ipc.make_record).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    assert tuple(p.name for p in params) == DRIVER_FIELDS == ipc.RAW_RECORD_FIELDS


def test_make_record_puts_each_value_at_its_fields_position():
    # Every field gets a distinct value: a swapped pair in the list would show up as a mismatch.
    values = {name: f"value-of-{name}" for name in DRIVER_FIELDS}
    record = ipc.make_record(**values)
    assert dict(zip(ipc.RAW_RECORD_FIELDS, record, strict=True)) == values


def test_driver_fields_are_the_measured_fields_then_the_transport_only_ones():
    transport = tuple(name for name in DRIVER_FIELDS if FIELD[name].origin == TRANSPORT)
    assert transport == (
        "chunk_times",
        "count_text",
        "first_answer_at",
        "last_answer_at",
        "num_answer_chunks",
        "reasoning_text",
    )
    assert DRIVER_FIELDS == (*MEASURED_FIELDS, *transport)


def test_make_trace_line_parameters_are_the_trace_fields_in_order():
    params = inspect.signature(ipc.make_trace_line).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    assert tuple(p.name for p in params) == ipc.RAW_TRACE_FIELDS


def test_make_trace_line_puts_each_value_at_its_fields_position():
    values = {name: f"value-of-{name}" for name in ipc.RAW_TRACE_FIELDS}
    line = ipc.make_trace_line(**values)
    assert dict(zip(ipc.RAW_TRACE_FIELDS, line, strict=True)) == values
