"""Reading request records into polars + the pooled tbc array."""

from __future__ import annotations

import orjson
from veeksha.runner.evaluation.frame import read_records, read_trace, records_from_dicts

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
