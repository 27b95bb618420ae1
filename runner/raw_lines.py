"""A driver's raw lines (runner.ipc) made into the lines a run directory holds.

A driver ships trace lines and records as positional lists with times on its own perf_counter
clock. The recorder makes them relative to the driver's start (`t0`), counts the tokens the server
gave no count for, and finalizes each record; `veeksha-run evaluate` does the same to what a driver
kept for a recorder that died (driver/rescue.py), so both write the same lines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from veeksha.runner import ipc
from veeksha.runner.evaluation.request_metrics import finalize_record, rounded_time
from veeksha.shared.redact import scrub_content


def trace_line(raw: list[Any], t0: float, secrets: list[str]) -> dict[str, Any]:
    """A dispatch trace line; `secrets` (redact.scrub_list) are scrubbed from its content."""
    line = dict(zip(ipc.RAW_TRACE_FIELDS, raw, strict=True))
    for name in ipc.RAW_TRACE_TIME_FIELDS:
        if line[name] is not None:
            line[name] = rounded_time(line[name] - t0)
    content = line["content"]
    if content is None:
        del line["content"]
    elif secrets:  # only lines with content pay for this, and only in the recorder
        line["content"] = scrub_content(content, secrets)
    return line


def record_line(raw: list[Any], t0: float, count_tokens: Callable[[str], int]) -> dict[str, Any]:
    """A finalized request record (request_metrics.finalize_record)."""
    rec = dict(zip(ipc.RAW_RECORD_FIELDS, raw, strict=True))
    for name in ipc.RAW_TIME_FIELDS:
        if rec[name] is not None:
            rec[name] -= t0
    rec["chunk_times"] = [t - t0 for t in rec["chunk_times"] or ()]
    for name in ("first_answer_at", "last_answer_at"):
        if rec[name] is not None:
            rec[name] -= t0
    _count_tokens(rec, rec.pop("count_text"), rec.pop("reasoning_text"), count_tokens)
    return finalize_record(rec)


def _count_tokens(
    rec: dict[str, Any], text: str | None, reasoning: str | None, count_tokens: Callable[[str], int]
) -> None:
    """Counts the server did not give, and (with a tokenizer) the client's count beside the server's."""
    counted_reasoning = count_tokens(reasoning) if reasoning else 0
    if rec["num_reasoning_tokens"] is None and rec["reasoning_token_source"] is not None:
        rec["num_reasoning_tokens"] = counted_reasoning  # no reasoning text: 0 tokens
    if text is None:
        return
    # Output is reasoning and answer, as the server's completion_tokens counts it.
    counted = count_tokens(text) + counted_reasoning
    if rec["num_output_tokens"] is None:
        rec["num_output_tokens"] = counted
    elif rec["client_prompt_tokens"] is not None:  # the driver asked for a comparison
        rec["client_output_tokens"] = counted
