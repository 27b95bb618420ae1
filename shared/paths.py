"""The output-directory contract: every file name the runner writes and the uploader reads.

Spelled once here (spec: outputs.md); everything else imports these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from veeksha.shared.records import DISTRIBUTION_METRICS as _DISTRIBUTION_METRICS

RUN_JSON = "run.json"
CONFIG_YML = "config.yml"
HEALTH_CHECK_TXT = "health_check_results.txt"
SERVER_LOG = "server.log"  # a launched server's output, scrubbed and size-capped (never uploaded)
METRICS_DIR = "metrics"
TRACES_DIR = "traces"
WANDB_RUN_JSON = "wandb_run.json"  # written by the uploader only
WANDB_DIR = "wandb"  # written by the uploader only
UPLOAD_LOCK = ".veeksha-upload.lock"  # the uploader's per-directory lock
# Holds the W&B run id while an upload is under way: an upload that died after creating the run can
# then be retried onto that same run, not skipped as "uploaded from elsewhere".
UPLOAD_PENDING = ".veeksha-upload.pending"

REQUEST_RECORDS = "request_level_metrics.jsonl"
SUMMARY_STATS = "summary_stats.json"
THROUGHPUT_METRICS = "throughput_metrics.json"
SLO_RESULTS = "slo_results.json"
HEALTH_CHECKS_JSON = "health_checks.json"
PREFILL_STATS = "prefill_stats.json"
TIMESERIES_CSV = "timeseries.csv"
TIMESERIES_PNG = "timeseries.png"
SERVER_METRICS_CSV = "server_metrics.csv"  # the server's own metrics, scraped during the run
DISPATCH_TRACE = "dispatch_trace.jsonl"
# Kept only until the run has ended whole, never uploaded: what `veeksha-run evaluate` needs to give
# every dispatched request a record after a crash (runner/lost_records.py).
UNLISTED_TRACE = ".veeksha-dispatch-trace.jsonl"  # the dispatch trace of a run with the trace off
DRIVER_RESCUE = ".veeksha-driver-{}.rescue"  # what a driver had sent a recorder that died
DRIVER_DISPATCHES = ".veeksha-driver-{}.dispatches"  # a driver's latest dispatches, for its SIGKILL
EVALUATE_LOCK = ".veeksha-evaluate.lock"  # held by `veeksha-run evaluate` while it rewrites the run

# Metrics that get a `<metric>.csv` (101 quantiles) and a `<metric>.png` distribution plot: derived
# from the field table (records.FIELDS), re-exported here next to the file names they produce.
DISTRIBUTION_METRICS = _DISTRIBUTION_METRICS

# Sweep and capacity-search directories.
SWEEP_DIR_PREFIX = "sweep-"
SWEEP_MANIFEST = "sweep_manifest.json"
SWEEP_SUMMARY_JSON = "sweep_summary.json"
SWEEP_SUMMARY_CSV = "sweep_summary.csv"
CAPSEARCH_DIR_PREFIX = "capsearch-"
CAPSEARCH_RUNS_DIR = "runs"
CAPSEARCH_RESULTS = "capacity_search_results.json"
CAPSEARCH_ATTEMPTS_CSV = "capacity_search_attempts.csv"

# What the uploader may put in the W&B artifact: relative glob patterns, paths kept.
ARTIFACT_ALLOW_LIST = (
    CONFIG_YML,
    RUN_JSON,
    HEALTH_CHECK_TXT,
    f"{METRICS_DIR}/*.json",
    f"{METRICS_DIR}/*.jsonl",
    f"{METRICS_DIR}/*.csv",
    f"{METRICS_DIR}/*.png",
    f"{TRACES_DIR}/*",
)


@dataclass(frozen=True)
class RunPaths:
    """Absolute paths of one run directory's files."""

    root: Path

    @property
    def run_json(self) -> Path:
        return self.root / RUN_JSON

    @property
    def config_yml(self) -> Path:
        return self.root / CONFIG_YML

    @property
    def health_check_txt(self) -> Path:
        return self.root / HEALTH_CHECK_TXT

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_DIR

    @property
    def traces(self) -> Path:
        return self.root / TRACES_DIR

    @property
    def request_records(self) -> Path:
        return self.metrics / REQUEST_RECORDS

    @property
    def summary_stats(self) -> Path:
        return self.metrics / SUMMARY_STATS

    @property
    def throughput_metrics(self) -> Path:
        return self.metrics / THROUGHPUT_METRICS

    @property
    def slo_results(self) -> Path:
        return self.metrics / SLO_RESULTS

    @property
    def health_checks_json(self) -> Path:
        return self.metrics / HEALTH_CHECKS_JSON

    @property
    def prefill_stats(self) -> Path:
        return self.metrics / PREFILL_STATS

    @property
    def timeseries_csv(self) -> Path:
        return self.metrics / TIMESERIES_CSV

    @property
    def timeseries_png(self) -> Path:
        return self.metrics / TIMESERIES_PNG

    @property
    def server_metrics_csv(self) -> Path:
        return self.metrics / SERVER_METRICS_CSV

    @property
    def dispatch_trace(self) -> Path:
        return self.traces / DISPATCH_TRACE

    @property
    def unlisted_trace(self) -> Path:
        return self.root / UNLISTED_TRACE

    @property
    def evaluate_lock(self) -> Path:
        return self.root / EVALUATE_LOCK

    def driver_rescue(self, driver_id: int) -> Path:
        return self.root / DRIVER_RESCUE.format(driver_id)

    def driver_rescues(self) -> list[Path]:
        return sorted(self.root.glob(DRIVER_RESCUE.format("*")))

    def driver_dispatches(self, driver_id: int) -> Path:
        return self.root / DRIVER_DISPATCHES.format(driver_id)

    def all_driver_dispatches(self) -> list[Path]:
        return sorted(self.root.glob(DRIVER_DISPATCHES.format("*")))

    @property
    def wandb_run_json(self) -> Path:
        return self.root / WANDB_RUN_JSON

    @property
    def wandb_dir(self) -> Path:
        return self.root / WANDB_DIR

    def distribution_csv(self, metric: str) -> Path:
        return self.metrics / f"{metric}.csv"

    def distribution_png(self, metric: str) -> Path:
        return self.metrics / f"{metric}.png"

    def make_dirs(self) -> None:
        self.metrics.mkdir(parents=True, exist_ok=True)
        self.traces.mkdir(parents=True, exist_ok=True)
