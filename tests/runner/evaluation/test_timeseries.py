"""timeseries.csv: hand-computed rows, and the live writer equal to the rebuild."""

from __future__ import annotations

import csv
import math

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


def _feed_hand_records(writer):
    for rec in _hand_records():
        writer.add_dispatch(rec["scheduler_dispatched_at"])
    for rec in _hand_records():
        writer.add(rec)


def test_live_writer_waits_for_the_lag_then_matches_the_rebuild(tmp_path):
    live = tmp_path / "live.csv"
    writer = TimeseriesWriter(live, lag_s=2.0)
    _feed_hand_records(writer)
    writer.flush(3.0)  # row k is final at k + 1 + lag: only row 0
    assert [r["elapsed_s"] for r in _rows(live)] == ["0"]
    writer.flush(100.0)  # never beyond the last second a record touched
    assert [r["elapsed_s"] for r in _rows(live)] == ["0", "1", "2"]
    writer.close(100.0)
    write_timeseries(tmp_path / "rebuilt.csv", build_timeseries(records_from_dicts(_hand_records())))
    assert live.read_bytes() == (tmp_path / "rebuilt.csv").read_bytes()


def test_rows_are_written_while_requests_are_still_in_flight(tmp_path):
    # One short request dispatched every second 0..9; the ones of seconds 8 and 9 have not ended
    # at 10 s. Rows are final 3 s (the default lag) after they end, whatever is still in flight later.
    live = tmp_path / "live.csv"
    writer = TimeseriesWriter(live)
    done = [request(s, sent=s + 0.2, chunks=[s + 0.4, s + 0.6], n_out=2) for s in range(8)]
    running = [request(s, sent=s + 0.2, chunks=[s + 0.4, s + 5.0], n_out=2) for s in (8, 9)]
    for rec in done + running:
        writer.add_dispatch(rec["scheduler_dispatched_at"])
    for rec in done:
        writer.add(rec)
    writer.flush(10.0)
    assert [r["elapsed_s"] for r in _rows(live)] == [str(s) for s in range(7)]
    assert all(r["dispatched"] == r["completed"] == "1" for r in _rows(live))
    writer.flush(12.0)  # row 7 is due, row 8 on is held: request 8 is still open
    assert len(_rows(live)) == 8
    for rec in running:
        writer.add(rec)
    writer.flush(20.0)
    writer.close(20.0)
    write_timeseries(tmp_path / "rebuilt.csv", build_timeseries(records_from_dicts(done + running)))
    assert live.read_bytes() == (tmp_path / "rebuilt.csv").read_bytes()


def test_a_long_request_holds_only_the_rows_it_spans(tmp_path):
    # A 30 s request dispatched at 2.5: rows 0..1 are written on time; rows from 2 on need its
    # record (its end for in_flight, its chunks for output_tokens_per_s), then come at once.
    live = tmp_path / "live.csv"
    writer = TimeseriesWriter(live)
    long = request(0, sent=2.5, chunks=[3.0, 32.5], n_out=2)
    short = [request(i, sent=i + 0.5, chunks=[i + 0.7], n_out=1) for i in range(1, 40)]
    writer.add_dispatch(long["scheduler_dispatched_at"])
    for now in range(1, 50):
        for rec in short:
            if now - 1 <= rec["scheduler_dispatched_at"] < now:
                writer.add_dispatch(rec["scheduler_dispatched_at"])
                writer.add(rec)
        if now == 33:
            writer.add(long)
        writer.flush(float(now))
        held = 2 if now < 33 else 40  # 40: the last second a record touched
        assert len(_rows(live)) == max(0, min(now - 3, held)), now
    writer.close(50.0)
    write_timeseries(tmp_path / "rebuilt.csv", build_timeseries(records_from_dicts([long, *short])))
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


def _feed(path, records, lag_s=3.0, delay=0.0, dispatches=True):
    """Replay a run as the recorder sees it: driver batches every 0.1 s carry the records of the
    requests that ended (`delay` s late) and the dispatches of the tick, records first, arriving
    0.2 s after the tick; the writer is flushed every second. Returns the writer and the number of
    rows on disk at each flush."""
    events = []
    for rec in records:
        end = rec["client_completed_at"] or rec["result_processed_at"]
        events.append((end + delay, 0, rec))
        if dispatches and rec["scheduler_dispatched_at"] is not None:
            events.append((rec["scheduler_dispatched_at"], 1, rec))
    batches: dict[int, list] = {}
    for t, kind, rec in events:
        batches.setdefault(math.floor(t * 10) + 1, []).append((kind, rec))
    writer = TimeseriesWriter(path, lag_s=lag_s)
    on_disk = {}
    next_flush = 1.0
    for tick in sorted(batches):
        arrival = tick / 10 + 0.2
        while next_flush <= arrival:
            writer.flush(next_flush)
            on_disk[next_flush] = path.read_bytes().count(b"\n") - 1 if path.exists() else 0
            next_flush += 1.0
        for kind, rec in sorted(batches[tick], key=lambda e: e[0]):
            if kind == 0:
                writer.add(rec)
            else:
                writer.add_dispatch(rec["scheduler_dispatched_at"])
    writer.close(next_flush)
    return writer, on_disk


@pytest.mark.parametrize("seed", [1, 2])
def test_live_file_equals_rebuilt_file(tmp_path, seed):
    records = _random_run(seed)
    writer, on_disk = _feed(tmp_path / "live.csv", records)  # the default lag: 3 s
    assert not writer.stale
    write_timeseries(tmp_path / "rebuilt.csv", build_timeseries(records_from_dicts(records)))
    live, rebuilt = (tmp_path / "live.csv").read_bytes(), (tmp_path / "rebuilt.csv").read_bytes()
    assert live.count(b"\n") > 40
    assert live == rebuilt
    # Written while the run went: rows followed the clock, held only by requests still in flight.
    assert on_disk[20.0] > 0 and on_disk[30.0] > on_disk[20.0]


def test_a_record_later_than_the_lag_makes_the_live_file_go_away(tmp_path):
    # Records reaching the writer 5 s after their end, with a 1 s lag: completions land in rows
    # whose quantiles are already computed. The file would be wrong, so close() deletes it for
    # the evaluation to rebuild.
    writer, _ = _feed(tmp_path / "live.csv", _random_run(3), lag_s=1.0, delay=5.0)
    assert writer.stale
    assert not (tmp_path / "live.csv").exists()


def test_a_request_the_writer_never_saw_dispatched_makes_the_live_file_go_away(tmp_path):
    # Without the dispatches, nothing holds the rows a long request spans.
    writer, _ = _feed(tmp_path / "live.csv", _random_run(3), dispatches=False)
    assert writer.stale
    assert not (tmp_path / "live.csv").exists()


def test_a_request_whose_record_never_comes_makes_rows_past_the_records_go_away(tmp_path):
    # A driver that died: the open request let rows be written that the records do not reach.
    live = tmp_path / "live.csv"
    writer = TimeseriesWriter(live)
    rec = request(0, sent=0.5, chunks=[0.7], n_out=1)
    writer.add_dispatch(rec["scheduler_dispatched_at"])
    writer.add(rec)
    writer.add_dispatch(1.5)  # never ends
    writer.flush(10.0)
    assert len(_rows(live)) == 1  # row 0 only: the open request holds row 1 on
    writer.close(10.0)
    assert not writer.stale and live.exists()  # nothing past the records was written
    writer = TimeseriesWriter(live)
    writer.add_dispatch(5.5)  # never ends
    writer.add_dispatch(rec["scheduler_dispatched_at"])
    writer.add(rec)
    writer.flush(10.0)
    assert len(_rows(live)) == 5  # rows 0..4, from a request that will never be recorded
    writer.close(10.0)
    assert writer.stale and not live.exists()


def test_warmup_requests_hold_rows_but_add_nothing(tmp_path):
    live = tmp_path / "live.csv"
    writer = TimeseriesWriter(live)
    warm = request(0, sent=0.5, chunks=[0.7, 6.5], n_out=2, is_warmup=True)
    rec = request(1, sent=1.5, chunks=[1.7], n_out=1)
    for r in (warm, rec):
        writer.add_dispatch(r["scheduler_dispatched_at"])
    writer.add(rec)
    writer.flush(6.0)
    assert _rows(live) == []  # the warmup request, still open, might be a measured one
    writer.add(warm)
    writer.flush(6.0)
    writer.close(6.0)
    write_timeseries(tmp_path / "rebuilt.csv", build_timeseries(records_from_dicts([warm, rec])))
    assert live.read_bytes() == (tmp_path / "rebuilt.csv").read_bytes()
    assert [r["dispatched"] for r in _rows(live)] == ["0", "1"]


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


def test_the_rebuild_leaves_the_runs_tbc_gaps_as_they_were():
    # Every request's gaps are a slice of one pooled array, which the summary, the SLOs and the
    # health checks read while the time series is built beside them (evaluate.py, another thread).
    # Requests completing in file order tile that array, so a second's gaps are a view of it: the
    # rebuild once sorted them there, moving gaps between requests (and the run's tbc mean changed
    # in its last digits, depending on the threads' timing).
    records = records_from_dicts(
        [
            request(i, sent=i * 0.1, chunks=[i * 0.1 + g for g in (0.1, 0.3 + 0.05 * i, 0.9)], n_out=3)
            for i in range(6)
        ]
    )
    before = records.tbc_values.copy()
    assert not np.array_equal(np.sort(before), before)  # sorting would move something
    build_timeseries(records)
    assert np.array_equal(records.tbc_values, before)
