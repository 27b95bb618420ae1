"""Per-request metrics: turn what the driver measured into the record we write (spec: metrics.md).

Runs in the recorder once per finished request (up to ~1000/s), so it is plain Python on small
lists, no polars. Every timestamp is rounded to whole nanoseconds (the clock's resolution) and every
duration is a difference of those nanoseconds, so `tbc` sums exactly to last chunk − first chunk and a
reader recomputing `client_completed_at − client_picked_up_at` from the file gets the written
`end_to_end_latency`. Latency fields are null when they do not exist, never 0.
"""

from __future__ import annotations

import itertools
from typing import Any

from veeksha.shared.records import (
    CLIENT_COMPLETED_AT,
    CLIENT_PICKED_UP_AT,
    DISPATCH_DELAY,
    END_TO_END_LATENCY,
    LATENCY_FIELDS,
    REQUEST_RECORD_FIELDS,
    REQUEST_TIME_FIELDS,
    SCHEDULER_DISPATCHED_AT,
    SCHEDULER_READY_AT,
    SUCCESS,
    TBC,
    TPOT,
    TPOT_ANSWER,
    TTFA,
    TTFC,
)

TIME_FIELDS = REQUEST_TIME_FIELDS
_NS = 1e9


def _ns(t: float | None) -> int | None:
    return None if t is None else round(t * _NS)


def _s(ns: int) -> float:
    # An integer count of ns divided by 1e9 is the double nearest to the 9-decimal value,
    # so its JSON form has at most 9 decimals.
    return ns / _NS


def rounded_time(t: float) -> float:
    """`t` seconds rounded to whole nanoseconds, as every time a run directory holds is written
    (the records here, the dispatch trace in raw_lines): one request's times then agree in both."""
    return _s(round(t * _NS))


def finalize_record(raw: dict[str, Any]) -> dict[str, Any]:
    """The record to write for one finished request (REQUEST_RECORD_FIELDS, in order).

    `raw` holds the measured fields plus `chunk_times` (seconds since run start of each content
    chunk); it is not modified. Failed requests (error, timeout, cancelled) keep their timestamps,
    error and dispatch_delay; their latency fields are null.
    """
    rec = {name: raw.get(name) for name in REQUEST_RECORD_FIELDS}
    ns = {name: _ns(rec[name]) for name in TIME_FIELDS}
    for name in TIME_FIELDS:
        t = ns[name]
        if t is not None:
            rec[name] = _s(t)
    ready, dispatched = ns[SCHEDULER_READY_AT], ns[SCHEDULER_DISPATCHED_AT]
    rec[DISPATCH_DELAY] = _s(dispatched - ready) if ready is not None and dispatched is not None else None
    if rec["status"] == SUCCESS:
        _latencies(rec, ns[CLIENT_PICKED_UP_AT], ns[CLIENT_COMPLETED_AT], raw.get("chunk_times"))
        _answer_latencies(rec, ns[CLIENT_PICKED_UP_AT], raw)
    else:
        for name in LATENCY_FIELDS:
            rec[name] = None
    return rec


def _latencies(
    rec: dict[str, Any], sent: int | None, completed: int | None, chunk_times: list[float] | None
) -> None:
    """Fill ttfc, tbc, tpot, e2e, normalized e2e and output throughput of a successful request."""
    chunks = [round(t * _NS) for t in chunk_times] if chunk_times else []
    if not chunks and not rec["is_stream"] and completed is not None:
        # Non-streaming: the whole reply is one chunk that arrives at completion.
        chunks = [completed]
    n_out = rec["num_output_tokens"]
    e2e = _s(completed - sent) if completed is not None and sent is not None else None
    rec[END_TO_END_LATENCY] = e2e
    rec[TTFC] = _s(chunks[0] - sent) if chunks and sent is not None else None
    # (b - a) / _NS is _s(b - a), inline: this runs once per chunk of every request, live.
    rec[TBC] = [(b - a) / _NS for a, b in itertools.pairwise(chunks)] if chunks else None
    # tpot needs time between the first and last chunk: one chunk carrying every token
    # (non-streaming), or chunks stamped with one time (the driver takes one time per socket read),
    # measures no decode speed. Their gaps of 0 stay in tbc: a measured 0.
    if n_out is not None and n_out > 1 and chunks and chunks[-1] > chunks[0]:
        rec[TPOT] = _s(chunks[-1] - chunks[0]) / (n_out - 1)
    else:
        rec[TPOT] = None
    has_tokens = n_out is not None
    rec["normalized_end_to_end_latency"] = (
        e2e / n_out if e2e is not None and has_tokens and n_out > 0 else None
    )
    rec["output_throughput"] = n_out / e2e if e2e is not None and has_tokens and e2e > 0 else None


def _answer_latencies(rec: dict[str, Any], sent: int | None, raw: dict[str, Any]) -> None:
    """ttfa and tpot_answer of a successful request: like ttfc and tpot, over answer chunks only
    (reasoning tokens are output, not answer: num_output_tokens - num_reasoning_tokens)."""
    first, last = _ns(raw.get("first_answer_at")), _ns(raw.get("last_answer_at"))
    rec[TTFA] = _s(first - sent) if first is not None and sent is not None else None
    n_out, n_reasoning = rec["num_output_tokens"], rec["num_reasoning_tokens"] or 0
    n_answer = n_out - n_reasoning if n_out is not None else None
    # Like tpot: it needs answer chunks at two times (one answer chunk, or answer chunks read
    # together, measure no decode speed).
    spread = last - first if first is not None and last is not None else 0
    if n_answer is not None and n_answer > 1 and spread > 0:
        rec[TPOT_ANSWER] = _s(spread) / (n_answer - 1)
    else:
        rec[TPOT_ANSWER] = None
