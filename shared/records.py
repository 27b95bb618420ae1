"""Record schemas of the output directory: request records, dispatch trace lines, run.json.

Spec: outputs.md. Times in records are seconds since the run's start on the monotonic clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

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

# ---------------------------------------------------------------- the request record, defined once
#
# FIELDS is the one table of per-request fields. Every list below (record order, what the driver
# ships, what the recorder derives, distribution metrics, SLO metrics, plot labels, polars types) is
# derived from it. Adding a per-request metric is one entry here plus its computation in
# runner/evaluation/request_metrics.py.

# Where a field comes from.
ID: Final = "id"  # identity, set by the driver
MEASURED: Final = "measured"  # measured by the driver, written as is (times made run-relative)
DERIVED: Final = "derived"  # computed by the recorder from the measured fields (metrics.md)
TRANSPORT: Final = "transport"  # shipped driver -> recorder, never written
SAMPLE: Final = "sample"  # not in the record: a distribution evaluation builds from the records


@dataclass(frozen=True)
class Field:
    """One per-request field (or a distribution metric sampled from the records)."""

    name: str
    type: type  # Python type of a non-null value; list = list[float]
    origin: str  # ID, MEASURED, DERIVED, TRANSPORT or SAMPLE
    unit: str = ""  # unit suffix of values: "s", "tok", "tok/s"
    label: str = ""  # human title (plots)
    axis: str = ""  # axis label with unit (plots)
    short: str = ""  # console abbreviation; set = shown in the console summary
    timestamp: bool = False  # seconds since the run's start (made run-relative by the recorder)
    # Its sample is taken from successful requests only; a DERIVED one is null unless the request
    # succeeded.
    success_only: bool = False
    # Gets <name>.csv quantiles, <name>.png and summary_stats.json `<name>_<stat>`; the rank orders
    # those outputs (stable: ties keep table order).
    distribution_rank: int | None = None
    column: str = ""  # the record column a SAMPLE metric reads (default: its own name)
    slo: bool = False  # usable as an SLO metric
    slo_aliases: tuple[str, ...] = ()  # other names an SLO config may use for it
    null_passes_slo: bool = False  # a null value (not measurable for that request) meets the SLO

    @property
    def distribution(self) -> bool:
        return self.distribution_rank is not None


_TIME: dict[str, Any] = {"type": float, "origin": MEASURED, "unit": "s", "timestamp": True}
_TOKENS: dict[str, Any] = {"type": int, "origin": MEASURED, "unit": "tok"}
_LATENCY: dict[str, Any] = {"type": float, "origin": DERIVED, "unit": "s", "success_only": True}

# Field names other modules refer to.
TTFC: Final = "ttfc"
TBC: Final = "tbc"
TPOT: Final = "tpot"
TTFA: Final = "ttfa"
TPOT_ANSWER: Final = "tpot_answer"
END_TO_END_LATENCY: Final = "end_to_end_latency"
DISPATCH_DELAY: Final = "dispatch_delay"
SCHEDULER_READY_AT: Final = "scheduler_ready_at"
SCHEDULER_DISPATCHED_AT: Final = "scheduler_dispatched_at"
CLIENT_PICKED_UP_AT: Final = "client_picked_up_at"
CLIENT_COMPLETED_AT: Final = "client_completed_at"
SESSION_DURATION: Final = "session_duration"  # per session: evaluation builds it from the sessions

FIELDS: Final = (
    # identity and outcome
    Field("request_id", int, ID),
    Field("session_id", int, ID),
    Field("node_id", int, ID),
    # The driver process that sent it (0..num_drivers-1; runtime.num_drivers).
    Field("driver_id", int, ID),
    Field("status", str, MEASURED),
    Field("error_type", str, MEASURED),
    Field("error_message", str, MEASURED),
    Field("http_status", int, MEASURED),
    Field("is_warmup", bool, MEASURED),
    # How many requests the request's session has: whether a session sent them all is known from the
    # records alone (the dispatch trace, which also has it, can be turned off).
    Field("session_size", int, MEASURED),
    # timestamps
    Field(SCHEDULER_READY_AT, **_TIME),
    Field(SCHEDULER_DISPATCHED_AT, **_TIME),
    Field(CLIENT_PICKED_UP_AT, **_TIME),
    Field(CLIENT_COMPLETED_AT, **_TIME),
    Field("result_processed_at", **_TIME),
    # token counts
    Field("num_delta_prompt_tokens", **_TOKENS),
    Field("num_total_prompt_tokens", **_TOKENS),
    Field("target_num_delta_prompt_tokens", **_TOKENS),
    Field(
        "num_output_tokens",
        **_TOKENS,
        label="Output length",
        axis="tokens",
        success_only=True,
        distribution_rank=8,
    ),
    Field("num_requested_output_tokens", **_TOKENS),
    # Prompt tokens another request sent before (its history, the run's shared prefix): what an ideal
    # prefix cache would not compute again.
    Field("num_cacheable_prompt_tokens", **_TOKENS),
    Field("token_count_source", str, MEASURED),
    # Reasoning tokens among num_output_tokens: the server's usage.completion_tokens_details, else
    # counted from the reasoning chunks (reasoning_token_source says which).
    Field("num_reasoning_tokens", **_TOKENS),
    Field("reasoning_token_source", str, MEASURED),
    # The client's own counts (configured tokenizer) beside the server's usage, to compare them: set
    # only when both exist. The prompt count is what the client sent, without the chat template.
    Field("client_prompt_tokens", **_TOKENS),
    Field("client_output_tokens", **_TOKENS),
    Field("is_stream", bool, MEASURED),
    # derived metrics
    Field(
        TTFC,
        **_LATENCY,
        label="Time to first chunk (TTFC)",
        axis="seconds",
        short="TTFC",
        distribution_rank=1,
        slo=True,
    ),
    Field(
        TTFA,
        **_LATENCY,
        label="Time to first answer chunk (TTFA, after any reasoning)",
        axis="seconds",
        short="TTFA",
        distribution_rank=11,
        slo=True,
    ),
    Field(
        TBC,
        list,
        DERIVED,
        unit="s",
        label="Time between chunks (TBC, all gaps pooled)",
        axis="seconds",
        short="TBC",
        success_only=True,
        distribution_rank=2,
        slo=True,
    ),
    Field(
        TPOT,
        **_LATENCY,
        label="Time per output token after the first (TPOT)",
        axis="seconds per token",
        short="TPOT",
        distribution_rank=3,
        slo=True,
        null_passes_slo=True,
    ),
    Field(
        TPOT_ANSWER,
        **_LATENCY,
        label="Time per answer token after the first (TPOT, answer chunks only)",
        axis="seconds per token",
        distribution_rank=12,
        slo=True,
        null_passes_slo=True,
    ),
    Field(
        END_TO_END_LATENCY,
        **_LATENCY,
        label="End-to-end latency",
        axis="seconds",
        short="E2E",
        distribution_rank=4,
        slo=True,
        slo_aliases=("e2e",),
    ),
    Field(
        "normalized_end_to_end_latency",
        **_LATENCY,
        label="End-to-end latency per output token",
        axis="seconds per token",
        distribution_rank=5,
        slo=True,
    ),
    Field(
        "output_throughput",
        float,
        DERIVED,
        unit="tok/s",
        label="Output throughput per request",
        axis="tokens per second",
        success_only=True,
        distribution_rank=6,
    ),
    Field(
        DISPATCH_DELAY,
        float,
        DERIVED,
        unit="s",
        label="Dispatch delay (dispatched − ready)",
        axis="seconds",
        distribution_rank=10,
    ),
    Field("finish_reason", str, MEASURED),
    # driver -> recorder only. Times are raw; `count_text` carries the generated text only when the
    # server sent no usage, so the recorder (not the driver) counts its tokens.
    Field("chunk_times", list, TRANSPORT),
    Field("count_text", str, TRANSPORT),
    # Raw times of the first and last answer chunk (content or tool call), how many there were, and
    # the reasoning text when the server did not count its reasoning tokens.
    Field("first_answer_at", float, TRANSPORT),
    Field("last_answer_at", float, TRANSPORT),
    Field("num_answer_chunks", int, TRANSPORT),
    Field("reasoning_text", str, TRANSPORT),
    # distributions sampled from the records, not stored per request
    Field(
        "num_prompt_tokens",
        int,
        SAMPLE,
        unit="tok",
        label="Prompt length (history included)",
        axis="tokens",
        success_only=True,
        distribution_rank=7,
        column="num_total_prompt_tokens",
    ),
    Field(
        SESSION_DURATION,
        float,
        SAMPLE,
        unit="s",
        label="Session duration (completed sessions)",
        axis="seconds",
        distribution_rank=9,
    ),
)
FIELD: Final = {f.name: f for f in FIELDS}


def _names(*origins: str) -> tuple[str, ...]:
    return tuple(f.name for f in FIELDS if f.origin in origins)


# One line of metrics/request_level_metrics.jsonl, in this order.
REQUEST_RECORD_FIELDS: Final = _names(ID, MEASURED, DERIVED)
# What the driver measures: every record field that is not derived, in record order.
MEASURED_FIELDS: Final = _names(ID, MEASURED)
# What the driver ships per request (the keyword parameters of runner.ipc.make_record, in order).
DRIVER_FIELDS: Final = _names(ID, MEASURED, TRANSPORT)
# Per-request metrics the recorder derives from the measured fields (metrics.md).
DERIVED_FIELDS: Final = _names(DERIVED)
# Timestamps of a request record (seconds since the run's start).
REQUEST_TIME_FIELDS: Final = tuple(f.name for f in FIELDS if f.timestamp)
# Derived metrics that exist only for a successful request (null otherwise).
LATENCY_FIELDS: Final = tuple(f.name for f in FIELDS if f.origin == DERIVED and f.success_only)
# Metrics that get a `<metric>.csv` (101 quantiles), a `<metric>.png` and summary statistics.
DISTRIBUTION_FIELDS: Final = tuple(
    sorted((f for f in FIELDS if f.distribution), key=lambda f: f.distribution_rank or 0)
)
DISTRIBUTION_METRICS: Final = tuple(f.name for f in DISTRIBUTION_FIELDS)
# Names an SLO may use, each field's aliases first; SLO_ALIASES maps an alias to its field.
SLO_METRICS: Final = tuple(n for f in FIELDS if f.slo for n in (*f.slo_aliases, f.name))
SLO_ALIASES: Final = {a: f.name for f in FIELDS for a in f.slo_aliases}
# SLO metrics whose null value (not measurable for that request, e.g. tpot of a one-token reply) passes.
NULL_PASSES_SLO: Final = tuple(f.name for f in FIELDS if f.null_passes_slo)

# metrics/<metric>.csv columns, one row per quantile of QUANTILE_GRID (0.00, 0.01, ... 1.00): a table
# with fewer rows was cut short (the uploader leaves it out).
DISTRIBUTION_CSV_COLUMNS: Final = ("cdf", "value")
QUANTILE_GRID: Final = tuple(i / 100 for i in range(101))

# summary_stats.json: `<metric>_<suffix>` (summary_stat_key) for every distribution metric; the
# percentile suffixes name these quantiles.
SUMMARY_PERCENTILES: Final = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
SUMMARY_STAT_SUFFIXES: Final = ("mean", *SUMMARY_PERCENTILES, "min", "max")


def summary_stat_key(metric: str, suffix: str) -> str:
    return f"{metric}_{suffix}"


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

# Progress counters the driver sends with every batch (runner.ipc BATCH "progress") and the live
# progress line shows.
PROGRESS_SESSIONS: Final = "sessions"
PROGRESS_DISPATCHED: Final = "dispatched"
PROGRESS_COMPLETED: Final = "completed"
PROGRESS_ERRORED: Final = "errored"
PROGRESS_CANCELLED: Final = "cancelled"  # sent, then cancelled at shutdown: not failed
PROGRESS_IN_FLIGHT: Final = "in_flight"
PROGRESS_OUTPUT_TOKENS: Final = "output_tokens"

# Series of metrics/server_metrics.csv that Veeksha reads (vLLM's names, which the simulated server
# exposes too); any other series the server has is kept as it spells it.
VLLM_RUNNING: Final = "vllm:num_requests_running"
VLLM_WAITING: Final = "vllm:num_requests_waiting"
VLLM_KV_USAGE: Final = "vllm:kv_cache_usage_perc"
VLLM_CACHE_QUERIES: Final = "vllm:prefix_cache_queries_total"
VLLM_CACHE_HITS: Final = "vllm:prefix_cache_hits_total"
VLLM_GENERATION_TOKENS: Final = "vllm:generation_tokens_total"

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
    "driver_id",
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


# Beside each `pid` of run.json, sweep_manifest.json and capacity_search_results.json: when that
# process started (clock ticks after boot, /proc/<pid>/stat). A pid alone is reused (a restarted
# container's first process); the pair names one process (runner/liveness.py).
PID_START_TICKS: Final = "pid_start_ticks"

# sweep_manifest.json (outputs.md). `status` is the sweep's: `running`, then `completed` or
# `interrupted`, or `crashed` (set by `veeksha-run evaluate` once the process `pid` on `host` is gone);
# `runs` has one entry per combination, in order, from the start (older sweeps listed a run only once
# it had ended: fewer entries than `count`).
SWEEP_MANIFEST_FIELDS: Final = ("sweep_id", "count", "status", "host", "pid", PID_START_TICKS, "runs")
# One entry of `runs`; `run_dir` is null until the run's directory is known (and for one that never
# had one). `status`: its run.json status once it has started, else one of the two below.
SWEEP_ENTRY_FIELDS: Final = ("index", "run_dir", "params", "status")
MEMBER_PENDING: Final = "pending"  # not started yet; the sweep goes on
MEMBER_NOT_RUN: Final = "not_run"  # never started: the sweep ended first (interrupted, crashed)


def summary_key_part(name: object) -> str:
    """A name (an SLO's, a health check's) as one part of a W&B summary key (`slo/<part>/met`): a
    '/' would nest the key. The config refuses SLO names equal after this; the uploader suffixes
    any that still are (a directory written before that rule)."""
    return str(name).replace("/", "_")


def run_finished(info: dict[str, Any]) -> bool:
    """Whether a run directory is complete: run.json has a final status AND finished_at. The final
    status is written before the evaluation (which reads it), finished_at after it: in between, the
    metrics files are still being written."""
    return info.get("status") != RUN_RUNNING and bool(info.get("finished_at"))


# run.json: why a run with its final status has no metrics (its evaluation failed, was cut, or is
# being redone). Set with finished_at null; removed when `veeksha-run evaluate` has written them.
EVALUATION_ERROR: Final = "evaluation_error"


def missing_metrics(info: dict[str, Any]) -> str | None:
    """Why a run has no metrics yet, as its runner or `evaluate` said; None when it has them (or no
    one said: it may be running, or being evaluated by the run itself)."""
    return None if info.get("finished_at") else info.get(EVALUATION_ERROR) or None


# run.json: how the server the run launched exited before the run ended, null when it did not (or the
# run launched none): {"exit_status": its exit status (negative: the signal that killed it), "detail":
# the one line said on the console}. Every evaluation adds a failed `server` health check from it (the
# run's own and `veeksha-run evaluate`'s). Comes with `driver`, once the load has ended.
SERVER_EXIT: Final = "server_exit"

# Why dispatching stopped, for a completed run (run.json "stop_reason").
STOP_BENCHMARK_TIMEOUT: Final = "benchmark_timeout"
STOP_MAX_SESSIONS: Final = "max_sessions"
STOP_MAX_REQUESTS: Final = "max_requests"
STOP_SESSIONS_EXHAUSTED: Final = "sessions_exhausted"  # a trace (or session source) ran out

# The version of this output contract (file names, record fields, metric keys), in run.json
# "contract_version". Runs before it was written count as 1. Bump it when a reader must tell apart.
CONTRACT_VERSION: Final = 2

# Every key run.json may hold (runner/run_dir.py writes them; tests/runner/test_output_contract.py
# checks a real run's against this list). `driver` and `server_exit` come once the load has ended;
# `evaluation_error` only while the run has no metrics (RunDir.leave_unevaluated,
# lost_records.mark_unfinished).
RUN_JSON_FIELDS: Final = (
    "run_id",
    "contract_version",
    "veeksha_version",
    "status",
    "started_at",
    "finished_at",
    "config_sha256",
    "host",
    "pid",
    PID_START_TICKS,
    "python",
    "argv",
    "sweep",
    "capacity_search",
    "error",
    "stop_reason",
    "driver",
    SERVER_EXIT,
    EVALUATION_ERROR,
)
