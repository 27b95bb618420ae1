"""timeseries.csv: hand-computed rows, and the live writer equal to the rebuild."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from veeksha.runner.evaluation.frame import records_from_dicts
from veeksha.runner.evaluation.timeseries import (
    COLUMNS,
    TimeseriesWriter,
    build_timeseries,
    write_timeseries,
)

from .factory import request


def _hand_records():
    return [
        # A: streaming, 3 chunks of 1 token, in flight [0.5, 1.5)
        request(0, sent=0.5, chunks=[0.75, 1.25, 1.5], n_out=3),
        # B: fails at 2.5, in flight [1.25, 2.5)
        request(1, sent=1.25, chunks=[], status="error", done=2.5),
        # C: non-streaming, 4 tokens, in flight [0, 1): its one chunk arrives at completion
        request(2, sent=0.0, chunks=[], done=1.0, n_out=4, is_stream=False),
        # D: warmup, left out
        request(3, sent=0.1, chunks=[0.2], is_warmup=True),
    ]


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_hand_computed_rows(tmp_path):
    write_timeseries(tmp_path / "ts.csv", build_timeseries(records_from_dicts(_hand_records())))
    rows = _rows(tmp_path / "ts.csv")
    assert list(rows[0]) == list(COLUMNS)
    assert [r["elapsed_s"] for r in rows] == ["0", "1", "2"]
    r0, r1, r2 = rows
    assert (r0["dispatched"], r0["completed"], r0["errored"]) == ("2", "0", "0")
    assert float(r0["in_flight"]) == 1.5  # A half the second, C the whole second
    assert r0["output_tokens"] == "0" and r0["output_tokens_per_s"] == "1"  # A's chunk at 0.75
    assert r0["ttfc_p50"] == r0["tbc_p99"] == ""  # nothing completed: empty cells
    assert (r1["dispatched"], r1["completed"], r1["request_throughput"]) == ("1", "2", "2")
    assert float(r1["in_flight"]) == 1.25  # A 0.5 + B 0.75
    assert r1["output_tokens"] == "7"  # A 3 + C 4, by completion
    assert r1["output_tokens_per_s"] == "6"  # A's chunks at 1.25 and 1.5 + C's one chunk at 1.0
    assert float(r1["ttfc_p50"]) == pytest.approx(0.625)  # ttfc A 0.25, C 1.0
    assert float(r1["ttfc_p99"]) == pytest.approx(0.25 + 0.75 * 0.99)
    assert float(r1["tbc_p50"]) == pytest.approx(0.375)  # gaps of A: 0.5, 0.25 (C has none)
    assert float(r1["tbc_p99"]) == pytest.approx(0.25 + 0.25 * 0.99)
    assert (r2["errored"], r2["completed"], float(r2["in_flight"])) == ("1", "0", 0.5)


def test_live_writer_waits_for_the_lag_then_matches_the_rebuild(tmp_path):
    live = tmp_path / "live.csv"
    writer = TimeseriesWriter(live, lag_s=2.0)
    for rec in _hand_records():
        writer.add(rec)
    writer.flush(3.0)  # row k is final at k + 1 + lag: only row 0
    assert [r["elapsed_s"] for r in _rows(live)] == ["0"]
    writer.flush(100.0)  # never beyond the last second a record touched
    assert [r["elapsed_s"] for r in _rows(live)] == ["0", "1", "2"]
    writer.close(100.0)
    write_timeseries(tmp_path / "rebuilt.csv", build_timeseries(records_from_dicts(_hand_records())))
    assert live.read_bytes() == (tmp_path / "rebuilt.csv").read_bytes()


def _random_run(seed: int, n: int = 1500):
    """Requests over ~40 s: streaming with 1-3 tokens per chunk, non-streaming, errors, cancelled
    follow-ups, warmup, requests of up to ~12 s; returned in completion order."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sent = float(rng.uniform(0, 40))
        kind = rng.random()
        if kind < 0.05:
            out.append(request(i, sent=sent, chunks=[], status="error", done=sent + float(rng.uniform(0, 3))))
            continue
        if kind < 0.08:  # cancelled before being sent: no dispatch, processed right away
            rec = request(i, sent=sent, chunks=[], status="cancelled")
            rec.update(scheduler_ready_at=None, scheduler_dispatched_at=None, client_picked_up_at=None,
                       client_completed_at=None, dispatch_delay=None)  # fmt: skip
            out.append(rec)
            continue
        k = int(rng.integers(1, 80))
        gaps = rng.exponential(float(rng.uniform(0.01, 0.15)), k - 1)
        first = sent + float(rng.exponential(0.3))
        chunks = [first, *(first + np.cumsum(gaps)).tolist()]
        if kind < 0.15:
            out.append(request(i, sent=sent, chunks=[], done=chunks[-1], n_out=k, is_stream=False))
        else:
            out.append(request(i, sent=sent, chunks=chunks, n_out=k * int(rng.integers(1, 4)),
                               is_warmup=bool(kind > 0.97)))  # fmt: skip
    end = [r["client_completed_at"] or r["result_processed_at"] for r in out]
    return [out[i] for i in np.argsort(end, kind="stable")]


def _feed(path, records, lag_s):
    """Replay records as the recorder would: each arrives 0.3 s after it ended, flush every second."""
    writer = TimeseriesWriter(path, lag_s=lag_s)
    next_flush = 1.0
    for rec in records:
        arrival = (rec["client_completed_at"] or rec["result_processed_at"]) + 0.3
        while next_flush <= arrival:
            writer.flush(next_flush)
            next_flush += 1.0
        writer.add(rec)
    writer.close(next_flush)
    return writer


@pytest.mark.parametrize("seed", [1, 2])
def test_live_file_equals_rebuilt_file(tmp_path, seed):
    records = _random_run(seed)
    writer = _feed(tmp_path / "live.csv", records, lag_s=20.0)  # longer than any request
    assert not writer.stale
    write_timeseries(tmp_path / "rebuilt.csv", build_timeseries(records_from_dicts(records)))
    live, rebuilt = (tmp_path / "live.csv").read_bytes(), (tmp_path / "rebuilt.csv").read_bytes()
    assert live.count(b"\n") > 40
    assert live == rebuilt


def test_a_record_changing_a_written_row_makes_the_live_file_go_away(tmp_path):
    # With a 1 s lag, requests that run longer than that reach the writer after their dispatch row
    # was written: the file would be wrong, so close() deletes it for the evaluation to rebuild.
    writer = _feed(tmp_path / "live.csv", _random_run(3), lag_s=1.0)
    assert writer.stale
    assert not (tmp_path / "live.csv").exists()


def test_no_records_gives_a_header_only_file(tmp_path):
    writer = TimeseriesWriter(tmp_path / "live.csv")
    writer.flush(10.0)
    writer.close(10.0)
    write_timeseries(tmp_path / "rebuilt.csv", build_timeseries(records_from_dicts([])))
    assert (
        (tmp_path / "live.csv").read_text()
        == (tmp_path / "rebuilt.csv").read_text()
        == ",".join(COLUMNS) + "\n"
    )
