"""Records for dispatched requests whose result never arrived: one record per dispatched request, always.

The dispatch trace says what was sent. When the driver process dies (or the whole run is killed),
requests it had sent have no record. Each gets one here, `status: error`, `error_type: driver_lost`,
so that records == dispatched holds and a crash shows up as errors instead of a shorter, healthier run.
Used live by the recorder, and by `veeksha-run evaluate` when it rebuilds a crashed directory.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from veeksha.runner import ipc
from veeksha.runner.driver.dispatch_ring import read_ring
from veeksha.runner.driver.rescue import StillWriting, read_frames
from veeksha.runner.evaluation.frame import json_object
from veeksha.runner.evaluation.request_metrics import finalize_record
from veeksha.runner.liveness import Owner
from veeksha.runner.raw_lines import record_line, trace_line
from veeksha.runner.run_dir import iso
from veeksha.runner.sessions.tokenizer import count_tokens_approx
from veeksha.shared.errors import UsageError
from veeksha.shared.jsonio import read_json, write_json
from veeksha.shared.paths import RunPaths
from veeksha.shared.records import (
    ERROR,
    EVALUATION_ERROR,
    RUN_CRASHED,
    RUN_FAILED,
    RUN_RUNNING,
    SCHEDULER_DISPATCHED_AT,
    SCHEDULER_READY_AT,
    missing_metrics,
    run_finished,
)

DRIVER_LOST = "driver_lost"


def lost_record(trace_line: dict[str, Any], why: str, noticed_at: float | None = None) -> dict[str, Any]:
    """The record of a dispatched request that has none, built from its trace line. `noticed_at`
    (seconds since the run's start) is when the loss was seen, its result_processed_at."""
    return finalize_record(
        {
            "request_id": trace_line.get("request_id"),
            "session_id": trace_line.get("session_id"),
            "node_id": trace_line.get("node_id"),
            "driver_id": trace_line.get("driver_id"),
            "status": ERROR,
            "error_type": DRIVER_LOST,
            "error_message": f"no result: {why} while this request was in flight",
            "is_warmup": bool(trace_line.get("is_warmup")),
            "session_size": trace_line.get("session_size"),
            SCHEDULER_READY_AT: trace_line.get("ready_at"),
            SCHEDULER_DISPATCHED_AT: trace_line.get("dispatched_at"),
            "result_processed_at": noticed_at,
        }
    )


def _json_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file, skipping lines that are not (evaluation reports those)."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for line in f:
            obj = json_object(line)
            if obj is not None:
                yield obj


def find_lost(records_path: Path, trace_path: Path) -> list[dict[str, Any]]:
    """Trace lines of dispatched requests that have no record, in dispatch order."""
    recorded = {rec.get("request_id") for rec in _json_lines(records_path)}
    return [
        line
        for line in _json_lines(trace_path)
        if line.get("dispatched_at") is not None and line.get("request_id") not in recorded
    ]


def trace_of(paths: RunPaths) -> Path:
    """The trace a run wrote: the unlisted one when its trace was off (recorder._open_trace)."""
    return paths.unlisted_trace if paths.unlisted_trace.exists() else paths.dispatch_trace


def merge_rescued(paths: RunPaths, count_tokens: Callable[[str], int]) -> int:
    """Append what drivers kept for a recorder that died (driver/rescue.py) and it never wrote:
    trace lines to the trace, records to the request log, as the recorder would have written them;
    then the dispatches a driver killed mid-tick never shipped (driver/dispatch_ring.py), to the
    trace. Returns how many records were added. Lines already there are not added again, so a
    recovery cut short can simply be run again."""
    trace_path = trace_of(paths)
    traced = {line.get("request_id") for line in _json_lines(trace_path)}
    recorded = {rec.get("request_id") for rec in _json_lines(paths.request_records)}
    new_lines: list[dict[str, Any]] = []
    new_records: list[dict[str, Any]] = []
    for rescue in paths.driver_rescues():
        try:
            messages = read_frames(rescue)
        except StillWriting:
            raise UsageError(
                f"a driver of {paths.root} is still ending (its recorder died moments ago); "
                "wait a few seconds, then evaluate it again"
            ) from None
        start = next((payload for kind, payload in messages if kind == ipc.START), None)
        if start is None:  # it died before its start: it sent nothing
            continue
        t0 = start["t0"]
        for payload in (payload for kind, payload in messages if kind == ipc.BATCH):
            for raw in payload["trace"]:
                line = trace_line(raw, t0, [])
                if line["request_id"] not in traced:
                    traced.add(line["request_id"])
                    new_lines.append(line)
            for raw in payload["records"]:
                record = record_line(raw, t0, count_tokens)
                if record["request_id"] not in recorded:
                    recorded.add(record["request_id"])
                    new_records.append(record)
    new_lines += unshipped_dispatches(paths, traced)
    append_records(trace_path, new_lines)  # the trace first, as the recorder writes them
    append_records(paths.request_records, new_records)
    return len(new_records)


def unshipped_dispatches(paths: RunPaths, traced: set[Any]) -> list[dict[str, Any]]:
    """Trace lines of what drivers dispatched and never shipped (killed mid-tick: their ring files,
    driver/dispatch_ring.py), but for those in `traced`."""
    lines = []
    for ring in paths.all_driver_dispatches():
        t0, raw_lines = read_ring(ring)
        if t0 is None:  # it died before its start: it sent nothing
            continue
        lines += [line for raw in raw_lines if (line := trace_line(raw, t0, []))["request_id"] not in traced]
    return lines


def discard_rescued(paths: RunPaths) -> None:
    """Once every dispatched request has its record: the files only a recovery needed."""
    for path in (*paths.driver_rescues(), *paths.all_driver_dispatches(), paths.unlisted_trace):
        path.unlink(missing_ok=True)


def last_seen(paths: RunPaths) -> float | None:
    """The latest run time (s) a record or trace line shows: the run was alive until then, so its
    lost requests were in flight at least that long (with no end they counted as in flight for 0 s,
    and made the concurrency check's mean NaN)."""
    times = [
        t
        for obj in (*_json_lines(paths.request_records), *_json_lines(trace_of(paths)))
        for t in (obj.get("result_processed_at"), obj.get("dispatched_at"))
        if isinstance(t, int | float)
    ]
    return max(times, default=None)


def append_records(records_path: Path, records: list[dict[str, Any]]) -> None:
    """Append records to the request log, first ending a line a crash left torn (it stays, as a
    corrupt line evaluation reports, rather than being glued to the first new record)."""
    if not records:
        return
    end_torn_line(records_path)
    with records_path.open("ab") as f:
        f.write(b"".join(orjson.dumps(r) + b"\n" for r in records))


def end_torn_line(records_path: Path) -> None:
    """End a last line a crash cut short, so that evaluation counts and names it like any line that
    is not a record (a torn last line is otherwise taken for one still being written, and skipped)."""
    with records_path.open("ab+") as f:
        f.seek(0, 2)
        if f.tell() > 0 and (f.seek(-1, 2), f.read(1))[1] != b"\n":
            f.write(b"\n")


@contextmanager
def evaluation_lock(paths: RunPaths) -> Iterator[None]:
    """Held while `veeksha-run evaluate` recovers and rewrites a run directory: two at once each
    appended every lost record (1,240 records for 620 requests), and rewrote the same files. The
    lock file goes when the lock does, so the directory keeps only the run's own files."""
    busy = UsageError(
        f"{paths.root} is being evaluated by another `veeksha-run evaluate`; "
        "wait for it to end (it leaves the directory whole)"
    )
    with paths.evaluate_lock.open("a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        try:  # a lock on a file the holder before us had already removed is no lock
            if os.stat(paths.evaluate_lock).st_ino != os.fstat(f.fileno()).st_ino:
                raise busy
        except FileNotFoundError:
            raise busy from None
        try:
            yield
        finally:
            paths.evaluate_lock.unlink(missing_ok=True)  # while still held: no one locks it after this


@dataclass
class Recovery:
    """What `recover` did to a run directory before its evaluation."""

    crashed: bool  # it was left `running` by processes that died: now marked crashed
    lost: int  # dispatched requests that had no record and were given a driver_lost one now
    finished_at: str | None  # to write into run.json once evaluated (None: it has one)
    rescued: int = 0  # records a driver kept for its dead recorder, written now


def recover(
    paths: RunPaths, other_host_gone: bool = False, count_tokens: Callable[[str], int] | None = None
) -> Recovery:
    """Make a run directory whose processes are gone whole again, before it is evaluated:
    - every dispatched request without a record gets a driver_lost one, in a run that crashed or
      failed (a full disk stopped the recorder before it could write them);
    - a run left `running` is marked `crashed`;
    - a run without finished_at (its process died mid-run or mid-evaluation) gets it back once
      evaluated: until then the uploader leaves the directory alone (shared.records.run_finished).
    - what drivers kept for a recorder that died is merged first (merge_rescued), with
      `count_tokens` (the run's tokenizer; the built-in approximation when None);
    Raises UsageError when the run's process is still alive on this host, or runs on another host
    (its process cannot be checked from here) unless `other_host_gone` says it has ended."""
    info = read_json(paths.run_json) if paths.run_json.exists() else None
    if not isinstance(info, dict):
        return Recovery(False, 0, None)
    unfinished = not run_finished(info)
    doing = "written" if info.get("status") == RUN_RUNNING else "evaluated"
    # (Unless the runner left it without metrics: a sweep's process lives on.)
    writing = unfinished and missing_metrics(info) is None
    if writing and Owner.named_in(info).alive:
        raise UsageError(
            f"{paths.root} is still being {doing} by process {info['pid']}; "
            "wait for the run to end (or stop it) before evaluating it"
        )
    if unfinished and info.get("host") != socket.gethostname() and not other_host_gone:
        # A process on another host cannot be looked at from here (a shared filesystem): taking a
        # live run for a crashed one would write driver_lost records into its live log.
        raise UsageError(
            f"{paths.root} may still be being {doing} on host {info.get('host')!r} (process "
            f"{info.get('pid')}); once that process is gone, rerun with --other-host-gone"
        )
    last_write = last_written(paths)
    crashed = info.get("status") == RUN_RUNNING
    # Only a crash or a failure (the recorder stopped by a full disk) can leave dispatched requests
    # without a record; in another run a request without one has a corrupt line, which stays so.
    lost = []
    rescued = 0
    if crashed or info.get("status") == RUN_FAILED:
        rescued = merge_rescued(paths, count_tokens or count_tokens_approx)
        why = "the run's processes died" if crashed else "the run ended before their results were written"
        lost = find_lost(paths.request_records, trace_of(paths))
        seen = last_seen(paths) if lost else None
        append_records(paths.request_records, [lost_record(line, why, seen) for line in lost])
        end_torn_line(paths.request_records)  # reported as a line that is no record, not dropped unseen
        discard_rescued(paths)
    if crashed:
        info.update(
            status=RUN_CRASHED,
            error=(
                "the run's processes died before it finished; "
                + (f"{rescued} record(s) its drivers kept were written; " if rescued else "")
                + f"{len(lost)} dispatched request(s) had no record and were recorded as driver_lost"
            ),
        )
        write_json(paths.run_json, info)
    finished_at = iso(dt.datetime.fromtimestamp(last_write, dt.UTC)) if unfinished else None
    return Recovery(crashed, len(lost), finished_at, rescued)


def last_written(paths: RunPaths) -> float:
    """When a run that died last wrote anything: the best estimate of when it ended. The request
    log alone said "at the start" for a run killed before its first request ended (the trace, the
    time series and the server's metrics went on being written), and a log `evaluate` made empty
    (touched) said "now"."""
    written = [paths.run_json, paths.dispatch_trace, paths.timeseries_csv, paths.server_metrics_csv]
    if paths.request_records.exists() and paths.request_records.stat().st_size:
        written.append(paths.request_records)
    return max(p.stat().st_mtime for p in written if p.exists())


def mark_unfinished(paths: RunPaths, why: str) -> str | None:
    """Before a finished run's files are rewritten: no finished_at (so no uploader takes a mix of
    new and old files, nor what a failed rewrite leaves), and why. Returns the finished_at to put
    back once the metrics are written (mark_finished); None when the run had none."""
    info = read_json(paths.run_json) if paths.run_json.exists() else None
    if not isinstance(info, dict) or not info.get("finished_at"):
        return None
    finished_at = str(info["finished_at"])
    info.update({"finished_at": None, EVALUATION_ERROR: why})
    write_json(paths.run_json, info)
    return finished_at


def mark_finished(paths: RunPaths, finished_at: str) -> None:
    """The evaluation is written: run.json gets its finished_at (the directory is complete)."""
    info = read_json(paths.run_json)
    if isinstance(info, dict) and not info.get("finished_at"):
        info["finished_at"] = finished_at
        info.pop(EVALUATION_ERROR, None)  # what kept it unfinished: the metrics are there now
        write_json(paths.run_json, info)
