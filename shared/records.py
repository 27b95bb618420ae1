"""Record schemas of the output directory: request records, dispatch trace lines, run.json.

Spec: outputs.md. Times in records are seconds since the run's start on the monotonic clock.
"""

from __future__ import annotations

from typing import Final

# Request status values.
SUCCESS: Final = "success"
ERROR: Final = "error"
CANCELLED: Final = "cancelled"
TIMEOUT: Final = "timeout"
REQUEST_STATUSES: Final = (SUCCESS, ERROR, CANCELLED, TIMEOUT)

# Where token counts came from.
COUNT_SERVER: Final = "server"
COUNT_TOKENIZER: Final = "tokenizer"
COUNT_APPROXIMATE: Final = "approximate"

# Error types a request record may carry (error_type), one per failure family.
ERROR_TYPES: Final = (
    "connect_error",  # could not open a connection
    "connect_timeout",  # connect deadline passed
    "request_timeout",  # whole-request deadline passed
    "http_error",  # non-2xx status
    "server_error",  # the server sent an error body or an error event mid-stream
    "connection_dropped",  # the server closed the connection before the response ended
    "protocol_error",  # a response we could not parse
    "not_event_stream",  # a 2xx answer to a streamed request that is neither an event stream nor JSON
    "empty_response",  # a 2xx with no output: empty body, no content chunk, no choices
    "cancelled",  # cancelled by us (session failure, shutdown)
    "driver_lost",  # dispatched, but the driver process died before its result reached the recorder
)

# Timestamps of a request record (seconds since the run's start).
REQUEST_TIME_FIELDS: Final = (
    "scheduler_ready_at",
    "scheduler_dispatched_at",
    "client_picked_up_at",
    "client_completed_at",
    "result_processed_at",
)

# Per-request metrics the recorder derives from the measured fields (metrics.md).
DERIVED_FIELDS: Final = (
    "ttfc",
    "tbc",
    "tpot",
    "end_to_end_latency",
    "normalized_end_to_end_latency",
    "output_throughput",
    "dispatch_delay",
)

# One line of metrics/request_level_metrics.jsonl, in this order: identity and outcome, timestamps,
# token counts, the derived metrics, finish_reason.
_HEAD: Final = (
    "request_id",
    "session_id",
    "node_id",
    "status",
    "error_type",
    "error_message",
    "http_status",
    "is_warmup",
    *REQUEST_TIME_FIELDS,
    "num_delta_prompt_tokens",
    "num_total_prompt_tokens",
    "target_num_delta_prompt_tokens",
    "num_output_tokens",
    "num_requested_output_tokens",
    "token_count_source",
    "is_stream",
)
REQUEST_RECORD_FIELDS: Final = (*_HEAD, *DERIVED_FIELDS, "finish_reason")
# What the driver measures: every record field that is not derived, in record order.
MEASURED_FIELDS: Final = (*_HEAD, "finish_reason")

# summary_stats.json: `<metric>_<suffix>` for every distribution metric.
SUMMARY_STAT_SUFFIXES: Final = ("mean", "p50", "p90", "p95", "p99", "min", "max")

# One entry of slo_results.json "results".
SLO_RESULT_FIELDS: Final = (
    "name",
    "metric",
    "percentile",
    "threshold",
    "observed_value",
    "met",
    "slo_metric_key",
    "lower_is_better",
    "num_samples",
)

# The state of one health check (health_checks.json "checks"[].result). A SKIPPED check did not run
# (not enough data, or not applicable): it neither passed nor failed.
HEALTH_PASSED: Final = "PASSED"
HEALTH_FAILED: Final = "FAILED"
HEALTH_SKIPPED: Final = "SKIPPED"

# metrics/timeseries.csv columns, in order.
TIMESERIES_COLUMNS: Final = (
    "elapsed_s",
    "dispatched",
    "completed",
    "errored",
    "in_flight",
    "output_tokens",
    "output_tokens_per_s",
    "request_throughput",
    "ttfc_p50",
    "ttfc_p99",
    "tbc_p50",
    "tbc_p99",
)

# One line of traces/dispatch_trace.jsonl (plus "content" when trace_recorder.include_content).
DISPATCH_TRACE_FIELDS: Final = (
    "request_id",
    "session_id",
    "node_id",
    "session_size",
    "scheduled_at",
    "ready_at",
    "dispatched_at",
    "parent_nodes",
    "history_parent",
    "wait_after_ready",
    "is_warmup",
)

# run.json
RUN_RUNNING: Final = "running"
RUN_COMPLETED: Final = "completed"
RUN_TIMEOUT: Final = "timeout"
RUN_INTERRUPTED: Final = "interrupted"
RUN_FAILED: Final = "failed"
# Set by `veeksha-run evaluate` on a directory whose processes died without a final status.
RUN_CRASHED: Final = "crashed"
RUN_STATUSES: Final = (RUN_RUNNING, RUN_COMPLETED, RUN_TIMEOUT, RUN_INTERRUPTED, RUN_FAILED, RUN_CRASHED)
# Why dispatching stopped, for a completed run (run.json "stop_reason").
STOP_BENCHMARK_TIMEOUT: Final = "benchmark_timeout"
STOP_MAX_SESSIONS: Final = "max_sessions"
STOP_MAX_REQUESTS: Final = "max_requests"
STOP_SESSIONS_EXHAUSTED: Final = "sessions_exhausted"  # a trace (or session source) ran out

RUN_JSON_FIELDS: Final = (
    "run_id",
    "veeksha_version",
    "status",
    "started_at",
    "finished_at",
    "config_sha256",
    "host",
    "python",
    "argv",
    "sweep",
    "capacity_search",
    "error",
    "stop_reason",
)
