"""Reading request records into polars + the pooled tbc array."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from veeksha.runner.evaluation.frame import records_from_dicts
from veeksha.runner.evaluation.reading import read_records, read_run_logs, read_trace

from .factory import request, trace_line, write_run


def _records():
    return [
        request(0, sent=0.0, chunks=[0.1, 0.2, 0.4]),
        request(1, sent=0.5, chunks=[0.6, 0.7], is_warmup=True),
        request(2, sent=1.0, chunks=[], status="error"),
        request(3, sent=1.0, chunks=[1.5]),
    ]


def test_reads_scalars_and_pools_only_measured_successful_gaps(tmp_path):
    paths = write_run(tmp_path, _records())
    recs = read_records(paths.request_records, block_bytes=300)  # many tiny blocks
    assert recs.df["request_id"].to_list() == [0, 1, 2, 3]
    # Warmup (request 1) and failed (request 2) gaps are not kept: the array is the tbc sample.
    assert recs.tbc_values.tolist() == [0.1, 0.2]
    assert recs.tbc_offsets.tolist() == [0, 2, 2, 2, 2]
    assert recs.df["has_tbc"].to_list() == [True, False, False, True]
    assert recs.df["ok"].to_list() == [True, True, False, True]


@pytest.mark.parametrize("block_bytes", [64, 700, 1500, 10**6])
def test_any_block_size_reads_the_same_records(tmp_path, block_bytes):
    paths = write_run(tmp_path, _records(), tail=b'{"request_id": 4, "stat')
    recs = read_records(paths.request_records, block_bytes=block_bytes)
    assert recs.df["request_id"].to_list() == [0, 1, 2, 3]
    assert recs.tbc_values.tolist() == [0.1, 0.2]


def test_same_result_from_dicts_and_from_file(tmp_path):
    paths = write_run(tmp_path, _records())
    a, b = read_records(paths.request_records), records_from_dicts(_records())
    assert a.df.equals(b.df)
    assert a.tbc_values.tolist() == b.tbc_values.tolist()


def test_torn_last_line_is_skipped(tmp_path):
    paths = write_run(tmp_path, _records(), tail=b'{"request_id": 4, "status": "succ')
    assert read_records(paths.request_records).df.height == 4


def test_a_corrupt_line_in_the_middle_loses_only_that_line(tmp_path):
    lines = [orjson.dumps(r) for r in _records()]
    lines.insert(2, b'{"request_id": 99, "status": ')
    lines.insert(3, b'{"request_id": "not-an-int-but-valid-json", "num_output_tokens": 1.5}')
    paths = write_run(tmp_path, [])
    paths.request_records.write_bytes(b"\n".join(lines) + b"\n")
    df = read_records(paths.request_records).df
    assert df.height == 5  # the torn line is dropped; the odd-typed one is kept with nulls
    assert df["request_id"].to_list() == [0, 1, None, 2, 3]


def test_string_ids_are_read_as_strings(tmp_path):
    recs = [request(0, sent=0.0, chunks=[0.1], session="conv-7")]
    recs[0]["request_id"] = "r-0"
    paths = write_run(tmp_path, recs)
    df = read_records(paths.request_records).df
    assert df["request_id"].to_list() == ["r-0"] and df["session_id"].to_list() == ["conv-7"]


def test_missing_or_empty_file_reads_as_no_records(tmp_path):
    recs = read_records(tmp_path / "absent.jsonl")
    assert recs.df.height == 0 and len(recs.tbc_values) == 0
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert read_records(tmp_path / "empty.jsonl").df.height == 0


def test_trace_marks_roots(tmp_path):
    recs = [
        request(0, sent=0.0, chunks=[0.1], session=5),
        request(1, sent=1.0, chunks=[1.1], session=5, node=1),
    ]
    trace = [trace_line(recs[0], size=2), trace_line(recs[1], size=2, parents=[0])]
    paths = write_run(tmp_path, recs, trace=trace)
    df = read_trace(paths.dispatch_trace)
    assert df["is_root"].to_list() == [True, False]
    assert df["session_size"].to_list() == [2, 2]
    assert read_trace(tmp_path / "none.jsonl") is None


def test_worker_processes_read_the_same_as_this_process(tmp_path):
    records = [
        request(i, sent=float(i), chunks=[i + 0.1, i + 0.3, i + 0.4], session=i // 2) for i in range(300)
    ]
    trace = [trace_line(r, size=2, parents=[0] if r["request_id"] % 2 else None) for r in records]
    paths = write_run(tmp_path, records, trace=trace, tail=b'{"request_id": 4')
    here, here_trace = read_run_logs(paths.request_records, paths.dispatch_trace, workers=0, block_bytes=4096)
    pool, pool_trace = read_run_logs(paths.request_records, paths.dispatch_trace, workers=2, block_bytes=4096)
    assert pool.df.equals(here.df) and pool.df.height == 300
    assert np.array_equal(pool.tbc_values, here.tbc_values) and len(here.tbc_values) == 600
    assert np.array_equal(pool.tbc_offsets, here.tbc_offsets)
    assert pool_trace.equals(here_trace)
