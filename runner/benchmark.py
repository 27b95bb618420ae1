"""One benchmark run, end to end: server → endpoint → run directory → driver + recorder → evaluation.

This process is the recorder/evaluator; the driver is a spawned child process. Whatever happens
after the run directory exists, it ends with a final run.json and every record received so far.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from veeksha.runner.driver.dispatcher import Placement
from veeksha.runner.driver.http.client import build_headers, endpoint_url, run_secret_values
from veeksha.runner.driver.http.client import secret_values as client_secret_values
from veeksha.runner.driver.http.transport import without_user_info
from veeksha.runner.driver.rescue import CrashFiles
from veeksha.runner.drivers import DriverLink, LocalDriver, available_cores, check_local_drivers, num_drivers
from veeksha.runner.progress import Progress, hang_up
from veeksha.runner.recorder import Recorder, RecordingResult
from veeksha.runner.run_dir import RunDir, ensure_writable
from veeksha.runner.server_launcher import (
    ServerHandle,
    check_ready_url_free,
    check_server_command,
    check_server_port,
    planned_api_host,
    readiness_headers,
    start_server,
)
from veeksha.runner.server_metrics import Scraper, metrics_url, probe
from veeksha.runner.sessions.factory import make_session_generator
from veeksha.runner.sessions.tokenizer import token_counter
from veeksha.runner.sessions.traces import TraceSessionGenerator
from veeksha.shared.config import BenchmarkConfig, ClientConfig, run_server
from veeksha.shared.config_checks import uses_client_api_base
from veeksha.shared.config_loader import config_secrets
from veeksha.shared.deadlines import DEFAULT_DEADLINE_S, upload_deadline_s
from veeksha.shared.errors import ConfigError, OutputError, Terminated
from veeksha.shared.paths import SERVER_LOG, RunPaths
from veeksha.shared.records import RUN_COMPLETED, RUN_FAILED, RUN_INTERRUPTED, RUN_TIMEOUT, SERVER_EXIT
from veeksha.shared.redact import redact_url, scrub_text
from veeksha.shared.wandb_env import check_env as check_wandb_env
from veeksha.shared.wandb_env import env_mode

DRIVER_EXIT_WAIT_S = 10.0
# The live W&B run (`veeksha-upload --follow`): the runner waits for the follower its own deadline
# (shared.deadlines) and this much longer.
FOLLOW_MARGIN_S = 60.0
# A follower ends within a second or two of run.json saying the run ended without metrics (as long as
# finishing its W&B run takes); past this, the runner stops it.
FOLLOW_END_S = 30.0
# The run's own upload (or follower) waits this long for an uploader holding the directory (a cron
# backfill that found it still running), where a backfill would skip it: skipped by both, the run
# would be uploaded by nobody.
UPLOAD_LOCK_WAIT_S = 120.0
# After a Ctrl-C the run's uploader has this long to end as it does on one (its workers stopped,
# its lock released, its exit line); then it is killed.
UPLOADER_STOP_WAIT_S = 10.0


@dataclass
class RunResult:
    run_dir: Path
    status: str
    error: str | None
    all_slos_met: bool | None = None
    all_health_passed: bool | None = None
    all_failed: bool = False  # no request succeeded
    upload_failed: bool = False
    evaluation_failed: bool = False  # the records are safe; the metrics are missing


def run_benchmark(
    cfg: BenchmarkConfig,
    parent_dir: Path,
    *,
    argv: list[str],
    sweep: dict[str, Any] | None = None,
    capacity_search: dict[str, Any] | None = None,
    quiet: bool = False,
    known_secrets: tuple[str, ...] = (),
) -> RunResult:
    """Run one benchmark and leave a complete run directory under `parent_dir`. `known_secrets`:
    secret values its files hide besides its config's own (LoadedRun.sweep_secrets)."""
    check_before_start(cfg, announce=True)
    check_ray_cluster(cfg)  # joined now: an unreachable cluster is a config error
    cfg = resolve_external_endpoint(cfg)
    check_ready_url_free(cfg.server)  # a server already there would be measured instead of ours
    ensure_writable(parent_dir)
    # The server inherits our environment (OPENAI_API_KEY ...): the client's secrets are scrubbed
    # from its output too, and so are the other runs' of its sweep (a key this run holds elsewhere).
    secrets = [*client_secret_values(cfg.client), *known_secrets]
    server_cfg = run_server(cfg)
    server: ServerHandle | None = None
    follower = None
    run: RunDir | None = None
    result: RunResult | None = None
    try:
        # Started in the try: a Ctrl-C as it returns still finds it stopped below. (Outside the
        # OSError's handling: a server that cannot be started is no write of the run's.)
        if server_cfg is not None:
            server = start_server(server_cfg, extra_secrets=secrets, ready_headers=readiness_headers(cfg))
        try:
            launched = server.api_base if server is not None else None
            cfg = resolve_endpoint(cfg, _server_api_base(cfg, launched))
            run = RunDir(
                parent_dir,
                cfg,
                argv=argv,
                sweep=sweep,
                capacity_search=capacity_search,
                known_secrets=known_secrets,
            )
            print(f"veeksha: run directory {run.root}", flush=True)
            if cfg.wandb.enabled and wandb_mode(cfg) == "online":
                follower = start_follower(run.root)
            result = _record_and_evaluate(cfg, run, server, quiet=quiet)
        except OSError as e:  # (disk full): one line naming the file, or at least the run's directory
            raise write_failure(e, run.root if run is not None else None) from e
    except KeyboardInterrupt:  # outside its traffic (its set-up, evaluation, summary): say what is left
        if run is not None and result is None and sweep is None and capacity_search is None:
            _say_unfinished(cfg, run)  # (a sweep or a search says it for all its runs)
        raise
    finally:
        try:
            if server is not None:  # its log goes into the run's directory, however the run ended
                server.stop(save_to=run.root / SERVER_LOG if run is not None else None)
        except KeyboardInterrupt:
            _not_uploaded(cfg, result, follower)
            raise
        if result is None and follower is not None:  # raised: a sweep goes on in this process
            end_follower(follower)
    _upload_result(cfg, result, follower)
    return result


def _not_uploaded(
    cfg: BenchmarkConfig, result: RunResult | None, follower: subprocess.Popen[bytes] | None
) -> None:
    """A Ctrl-C after the run's traffic, before its upload (its server stopping): nothing more is
    uploaded. The follower (its own session: it got no SIGINT) would go on uploading unseen in the
    background: it is stopped. A finished run says how to upload it later (_upload_result would have)."""
    if follower is not None:
        stop_follower(follower)
    if result is None or not will_upload(cfg):
        return
    if result.evaluation_failed:
        _not_uploaded_without_metrics(result.run_dir)
    else:
        _upload_interrupted(result.run_dir)


def _upload_result(cfg: BenchmarkConfig, result: RunResult, follower: subprocess.Popen[bytes] | None) -> None:
    """The finished run to W&B (when enabled): by its follower, else by the uploader now."""
    if result.evaluation_failed:  # no metrics to upload: the follower leaves its W&B run resumable
        if follower is not None:
            end_follower(follower)
        if will_upload(cfg):
            _not_uploaded_without_metrics(result.run_dir)
            result.upload_failed = True
    elif follower is not None:
        result.upload_failed = not wait_for_follower(follower, result.run_dir)
    elif cfg.wandb.enabled:
        result.upload_failed = not upload(result.run_dir, cfg)


def _say_unfinished(cfg: BenchmarkConfig, run: RunDir) -> None:
    """A single run stopped by a Ctrl-C outside its traffic: what finishes it. Without metrics (no
    finished_at: its evaluation was cut short or never came) `evaluate` first; W&B enabled, its upload."""
    if run.info.get("finished_at") is None:
        then_upload = f", then `veeksha-upload {run.root}`" if will_upload(cfg) else ""
        print(
            f"veeksha: not evaluated (interrupted): `veeksha-run evaluate {run.root}` writes its metrics"
            f"{then_upload}",
            file=sys.stderr,
            flush=True,
        )
    elif will_upload(cfg):
        _upload_interrupted(run.root)


def _not_uploaded_without_metrics(run_dir: Path) -> None:
    print(
        f"veeksha: not uploaded (no metrics): `veeksha-run evaluate {run_dir}`, "
        f"then `veeksha-upload {run_dir}`",
        file=sys.stderr,
    )


# A write failing with one of these: the disk (or the user's quota, or the file size limit) is full.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def write_failure(e: OSError, run_dir: Path | None = None) -> OutputError:
    """The one line for a write that failed: the file when the error names it, else the run directory
    it was written in (a library's write, e.g. a plot's, names no file). For a full disk, what to do
    next: `veeksha-run evaluate` finishes a run from its records once it has a run.json (without one
    it refuses the directory: nothing was recorded, the run is to be started again)."""
    if e.filename is not None:
        where = str(e.filename)
        if run_dir is None and isinstance(e.filename, str):
            run_dir = _run_dir_of(Path(e.filename))
    elif run_dir is not None:
        where = f"a file in {run_dir}"
    else:
        where = "the output directory"
    line = f"cannot write {where}: [Errno {e.errno}] {e.strerror}"
    if e.errno in DISK_FULL:
        if run_dir is not None and RunPaths(run_dir).run_json.is_file():
            line += "; free space, then `veeksha-run evaluate RUN_DIR` finishes the run from its records"
        elif run_dir is not None:
            line += f"; free space, then start the run again ({run_dir} has no run.json, no records)"
        else:
            line += "; free space, then try again"
    return OutputError(line)


def _run_dir_of(path: Path) -> Path | None:
    """The run directory `path` is in (its config.yml is the first file a run writes), if any."""
    for parent in list(path.parents)[:3]:  # RUN/config.yml, RUN/metrics/x.csv
        if RunPaths(parent).config_yml.is_file():
            return parent
    return None


def check_before_start(cfg: BenchmarkConfig, announce: bool = False) -> None:
    """The config errors found without a server, a directory or the network (a missing trace file,
    a bad tokenizer, a server binary that is not there, no endpoint at all, a WANDB_MODE or
    WANDB_BASE_URL the upload would refuse): before any run of a sweep or a capacity search starts,
    and before a run's own directory is made. With `announce` (the run itself, not a sweep's check
    ahead), it says what of the sessions' source is left out."""
    sessions = make_session_generator(cfg)
    check_local_drivers(cfg)
    check_server_command(cfg.server, config_secrets(cfg))
    check_server_port(cfg.server)
    if planned_api_host(cfg) is None:
        raise _no_api_base()
    if cfg.wandb.enabled:  # the upload at the end refuses what the W&B environment cannot mean
        check_wandb_env(os.environ)
    if announce:
        _announce_left_out(cfg, sessions)


def _announce_left_out(cfg: BenchmarkConfig, sessions: object) -> None:
    """Say what of a trace the run cannot send: records without a turn, and a timed replay longer
    than benchmark_timeout (a trace in milliseconds replayed as seconds looks like a quiet server)."""
    skipped = getattr(sessions, "skipped_records", 0)
    if skipped:
        print(f"veeksha: {skipped} trace record(s) without a user turn and a reply: left out", flush=True)
    timeout = cfg.runtime.benchmark_timeout
    if not isinstance(sessions, TraceSessionGenerator) or timeout <= 0:
        return
    due, total = sessions.records_due_within(timeout), len(sessions.records)
    if due is not None and due < total:
        print(
            f"veeksha: timed replay sends {due} of the trace's {total} records before "
            f"runtime.benchmark_timeout ({timeout:g} s); if its timestamps are milliseconds, set "
            "session_generator.time_scale: 1000",
            flush=True,
        )


def check_ray_cluster(cfg: BenchmarkConfig) -> None:
    """With runtime.ray_address: join the cluster and check it can run this config's drivers
    (ray_drivers.check_cluster); a ConfigError when not. Before a run's server or directory, and
    before a sweep's or a search's directory (check_ray_clusters)."""
    if cfg.runtime.ray_address is None:
        return
    from veeksha.runner.ray_drivers import check_cluster, connect

    connect(cfg.runtime.ray_address)
    check_cluster(cfg, planned_api_host(cfg))


def check_ray_clusters(configs: Iterable[BenchmarkConfig]) -> None:
    """check_ray_cluster once for each distinct thing it checks (the cluster, the drivers asked for,
    where the requests go): a sweep's every member, or a search's base config."""
    checked: set[tuple[Any, ...]] = set()
    for cfg in configs:
        key = (cfg.runtime.ray_address, cfg.runtime.num_drivers, planned_api_host(cfg))
        if key[0] is not None and key not in checked:
            checked.add(key)
            check_ray_cluster(cfg)


def _no_api_base() -> ConfigError:
    return ConfigError(
        "config error at client.api_base: not set; pass --client.api_base URL, set "
        "OPENAI_API_BASE, or add a server section (e.g. --server.type simulated)"
    )


def wandb_mode(cfg: BenchmarkConfig) -> str:
    """The mode the run's upload will have: the environment's (read as the uploader reads it) beats
    the config's wandb.mode; online by default."""
    return env_mode(os.environ) or cfg.wandb.mode or "online"


def wandb_disabled_by(cfg: BenchmarkConfig) -> str | None:
    """What disables the upload, as the uploader resolves its mode (wandb_mode): the environment, or
    `cfg`'s wandb.mode; None when nothing does."""
    if env_mode(os.environ) == "disabled":
        return "WANDB_MODE=disabled" if os.environ.get("WANDB_MODE") == "disabled" else "WANDB_DISABLED"
    if wandb_mode(cfg) == "disabled":
        return "wandb.mode: disabled"
    return None


def will_upload(cfg: BenchmarkConfig) -> bool:
    """Whether a directory run with `cfg` is uploaded: W&B enabled, and nothing disables it."""
    return cfg.wandb.enabled and wandb_disabled_by(cfg) is None


def _server_api_base(cfg: BenchmarkConfig, launched: str | None) -> str | None:
    """The launched server's URL when requests go there (config_checks.uses_client_api_base)."""
    return None if uses_client_api_base(cfg) else launched


def resolve_external_endpoint(cfg: BenchmarkConfig) -> BenchmarkConfig:
    """For an endpoint already up (no server section), `cfg` with its model named: a model it cannot
    name is found before anything is made (a run's, a sweep's or a search's directory). A server the
    run starts itself can only be asked once it runs (resolve_endpoint then): `cfg` as it is."""
    return resolve_endpoint(cfg, None) if cfg.server is None else cfg


def resolve_endpoint(cfg: BenchmarkConfig, server_api_base: str | None) -> BenchmarkConfig:
    """The config with client.api_base and client.model filled from the server section or
    /v1/models (the env fallback was applied when the config was loaded); `cfg` is not changed."""
    client = cfg.client
    if server_api_base is not None:
        client = replace(client, api_base=server_api_base)
    if not client.api_base:
        raise _no_api_base()
    if not client.model:
        client = replace(client, model=_only_model(client, client.api_base))
    return replace(cfg, client=client)


def _only_model(client: ClientConfig, api_base: str) -> str:
    """The one model the server lists at /models; ConfigError when it lists none or several."""
    url = endpoint_url(api_base, "/models")
    # Authenticated as the requests will be: the key, and any header of the user's (X-API-Key ...).
    headers = {name: value for name, value in build_headers(client) if name.lower() != "accept"}
    try:
        resp = httpx.get(without_user_info(url), headers=headers, timeout=client.connect_timeout)
        resp.raise_for_status()
        listing = resp.json()
        if not isinstance(listing, dict):
            raise TypeError(f"the answer is a JSON {type(listing).__name__}, not an object")
        models = [str(m["id"]) for m in listing.get("data", [])]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"config error at client.model: not set, and {redact_url(url)} did not list models "
            f"({scrub_text(str(e), client_secret_values(client))}); pass --client.model NAME"
        ) from None
    if len(models) != 1:
        raise ConfigError(
            f"config error at client.model: not set, and the server lists {len(models)} models "
            f"({', '.join(models[:5])}); pass --client.model NAME"
        )
    return models[0]


def _record_and_evaluate(
    cfg: BenchmarkConfig, run: RunDir, server: ServerHandle | None, *, quiet: bool
) -> RunResult:
    status, error = RUN_FAILED, None
    exited = None
    try:
        recording = _record(cfg, run, server)
        status, error = recording.status, recording.error
        exited = server.exited_early() if server is not None else None
        if exited is not None:  # what the run measured after that was a server that was not there
            print(f"veeksha: {exited}", file=sys.stderr, flush=True)
            # (An interrupted run stays so: a job's SIGTERM reaches the server too.)
            status = RUN_FAILED if status in (RUN_COMPLETED, RUN_TIMEOUT) else status
            error = error if error and exited in error else f"{error}; {exited}" if error else exited
        run.info["stop_reason"] = recording.stop_reason if status == RUN_COMPLETED else None
        # What every evaluation (this one and `veeksha-run evaluate`'s) makes the `server` check of.
        run.info[SERVER_EXIT] = server_exit(server, exited)
        run.info["driver"] = {
            "cpu_seconds": recording.driver_cpu_seconds,
            "num_records": recording.num_records,
            "num_driver_lost": recording.num_lost,
            "num_drivers": len(recording.drivers),
            "drivers": recording.drivers,
        }
    except BaseException as e:  # the directory must still end with a final status
        error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        status = RUN_INTERRUPTED if isinstance(e, KeyboardInterrupt) else RUN_FAILED
        run.leave_unevaluated(
            status, error, f"not evaluated; `veeksha-run evaluate {run.root}` writes its metrics"
        )
        raise
    result = RunResult(run.root, status, error)
    run.info["status"] = status  # evaluation reads the final status; finished_at comes after it
    run.save()
    try:
        from veeksha.runner.evaluation.evaluate import evaluate_run
        from veeksha.runner.evaluation.report import format_summary

        evaluation = evaluate_run(run.root)
        result.all_slos_met = evaluation.all_slos_met
        result.all_health_passed = evaluation.all_health_passed
        result.all_failed = evaluation.all_failed is not None
        if not quiet:
            print(format_summary(evaluation), flush=True)
    # The records are safe on disk either way; the recording's status stays what it was (a Ctrl-C
    # here interrupts the evaluation, not the run), and `veeksha-run evaluate` finishes the directory.
    except KeyboardInterrupt:
        run.leave_unevaluated(
            status, error, f"interrupted during evaluation; rerun `veeksha-run evaluate {run.root}`"
        )
        raise
    except Exception as e:
        why = f"evaluation failed: {type(e).__name__}: {e}"
        run.leave_unevaluated(status, error, f"{why}; rerun `veeksha-run evaluate {run.root}`")
        result.evaluation_failed = True
        result.error = error or why
        print(f"veeksha: {why}; rerun `veeksha-run evaluate {run.root}`", file=sys.stderr)
        return result
    run.finish(status, error)
    return result


def server_exit(server: ServerHandle | None, exited: str | None) -> dict[str, Any] | None:
    """run.json's server_exit: how the launched server exited during the run, None when it did not."""
    if server is None or exited is None:
        return None
    return {"exit_status": server.process.returncode, "detail": exited}


def _record(cfg: BenchmarkConfig, run: RunDir, server: ServerHandle | None) -> RecordingResult:
    links = _driver_links(cfg, run.paths)
    # From here on every link is stopped, whatever fails: a Ray driver's actor would otherwise stay
    # on the cluster (the recorder's files, the tokenizer and the metrics probe come first).
    try:
        result = _record_with(cfg, run, links, server)
    except BaseException:  # nothing can record the drivers' work any more (e.g. disk full): stop them
        for link in links:
            link.stop(0.0)
        raise
    finally:
        for link in links:
            link.stop(DRIVER_EXIT_WAIT_S)
    _say_driver_failures(result, links)
    return result


def _record_with(
    cfg: BenchmarkConfig, run: RunDir, links: list[DriverLink], server: ServerHandle | None
) -> RecordingResult:
    """The recording through `links`, which the caller stops; it stops early when `server` exits."""
    # Replies the server sent no usage for are counted here, never in the driver.
    count_tokens, _ = token_counter(cfg.client.tokenizer)
    recorder = Recorder(
        run.paths,
        Progress(cfg.runtime.benchmark_timeout),
        count_tokens,
        cfg.trace_recorder.enabled,
        secrets=[*run_secret_values(cfg), *run.known_secrets],  # a traced reply may echo them
        stop_when=server.exited_early if server is not None else None,
    )
    # From here a Ctrl-C is the run's (it ends interrupted, evaluated and uploaded), also in the
    # set-up before the drivers start (the metrics probe may take seconds): the recorder then stops
    # them as they start (INTERRUPTED_AT_START).
    previous = {s: signal.signal(s, handler) for s, handler in _stop_handlers(recorder).items()}
    scraper: Scraper | None = None
    try:
        scraper = _server_metrics(cfg, run.paths, recorder)
        if scraper is not None:
            scraper.start()
        return recorder.run(links, before_go=scraper.take_baseline if scraper is not None else None)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if scraper is not None:
            scraper.stop()
            if scraper.failures:
                tries = scraper.failures + scraper.rows
                print(f"veeksha: server metrics: {scraper.failures} of {tries} scrapes failed", flush=True)
            shortfall = scraper.shortfall()
            if shortfall is not None:
                print(f"veeksha: server metrics: {shortfall}", flush=True)


def _stop_handlers(recorder: Recorder) -> dict[int, Callable[[int, Any], None]]:
    """The signals that stop a recording: Ctrl-C and SIGTERM (the first drains, the second cancels),
    and SIGHUP (ssh dropped, terminal closed: one stop, a drain, however many come; the console may
    be gone from then on, and the run still finishes its files: progress.hang_up)."""

    def on_hangup(signum: int, frame: Any) -> None:
        if hang_up():
            recorder.on_signal(signum, frame)

    handlers: dict[int, Callable[[int, Any], None]] = {signal.SIGTERM: recorder.on_signal}
    # An ignored Ctrl-C stays so (a background job of a script: the Ctrl-C is the script's, and the
    # run ignored it everywhere but in its recording), as an ignored hangup does (nohup).
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        handlers[signal.SIGINT] = recorder.on_signal
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        handlers[signal.SIGHUP] = on_hangup
    return handlers


def _say_driver_failures(result: RecordingResult, links: list[DriverLink]) -> None:
    """On the console what run.json says of a driver that failed the run: without it, only "every
    request failed (N errors ...)" was shown, which reads like a server failing every request."""
    for line in driver_failures(result, links):
        print(f"veeksha: the run failed: {line}", file=sys.stderr, flush=True)


def driver_failures(result: RecordingResult, links: list[DriverLink]) -> list[str]:
    """One line per driver that failed the run, naming it and how it ended (a signal by its name),
    with the requests it left in flight when it is the only one."""
    failed = [d for d in result.drivers if d["status"] == RUN_FAILED and d["error"]]
    exits = {link.driver_id: link.exit_code for link in links}
    lines = []
    for d in failed:
        line = str(d["error"])
        if len(result.drivers) > 1 and not line.startswith(f"driver {d['driver_id']} "):
            line = f"driver {d['driver_id']}: {line}"  # its own message (e.g. a set-up error)
        code = exits.get(d["driver_id"])
        if isinstance(code, int) and code < 0:
            by = f"killed by {_signal_name(-code)}"
            said = f"(exit code {code})"
            line = line.replace(said, f"(exit code {code}: {by})") if said in line else f"{line} ({by})"
        lines.append(line)
    if len(failed) == 1 and result.num_lost:
        lines[0] += f"; its {result.num_lost} request(s) in flight were recorded as errors (driver_lost)"
    return lines


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _driver_links(cfg: BenchmarkConfig, paths: RunPaths) -> list[DriverLink]:
    """One link per driver: local processes (each with its crash files, should it or the recorder
    die: driver/rescue.py), or Ray actors when runtime.ray_address is set."""
    if cfg.runtime.ray_address is not None:
        from veeksha.runner.ray_drivers import ray_driver_links

        return ray_driver_links(cfg)
    n = num_drivers(cfg, available_cores())
    return [LocalDriver(cfg, Placement(i, n), CrashFiles.of(paths, i)) for i in range(n)]


def _server_metrics(cfg: BenchmarkConfig, paths: RunPaths, recorder: Recorder) -> Scraper | None:
    """The scraper of the server's own metrics, when server_metrics asks for one (auto: when the
    server answers in Prometheus text format now, before the run starts)."""
    wanted = cfg.server_metrics.enabled
    if wanted is False:
        return None
    url = metrics_url(cfg)
    # A query may hold a token, and the URL a password.
    shown = redact_url(urlsplit(url)._replace(query="", fragment="").geturl())
    if wanted == "auto":
        problem = probe(url, run_secret_values(cfg))
        if problem is not None:
            print(f"veeksha: server metrics: not scraped ({shown}: {problem})", flush=True)
            return None
    print(
        f"veeksha: server metrics: scraping {shown} every {cfg.server_metrics.interval_seconds:g} s",
        flush=True,
    )
    return Scraper(
        url, cfg.server_metrics.interval_seconds, paths.server_metrics_csv, recorder.elapsed_or_none
    )


def start_follower(run_dir: Path) -> subprocess.Popen[bytes] | None:
    """The live W&B run, in its own process (it inherits WANDB_API_KEY: no secret on its argv).

    Its own session: a Ctrl-C at the terminal interrupts the benchmark, whose final run.json the
    follower then uploads. None when it cannot start (the run is then uploaded at the end)."""
    cmd = [
        sys.executable,
        "-m",
        "veeksha.uploader",
        "--follow",
        str(run_dir),
        "--deadline",
        f"{DEFAULT_DEADLINE_S:.0f}",
        "--wait-lock",
        f"{UPLOAD_LOCK_WAIT_S:.0f}",
    ]
    print(f"veeksha: live W&B run: veeksha-upload {' '.join(cmd[3:])}", flush=True)
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as e:
        print(f"veeksha: could not start the W&B follower ({e}); uploading at the end", file=sys.stderr)
        return None


def wait_for_follower(follower: subprocess.Popen[bytes], run_dir: Path) -> bool:
    """Wait for the follower to finish the W&B run (bounded: its own deadline plus a margin)."""
    try:  # (the limit too: a Ctrl-C as its file is read finds the follower running as well)
        ok = follower.wait(upload_deadline_s(run_dir) + UPLOAD_LOCK_WAIT_S + FOLLOW_MARGIN_S) == 0
    except KeyboardInterrupt:  # it got none (its own session): stopped as at any stop, not left behind
        stop_follower(follower)
        _upload_interrupted(run_dir)
        raise
    except subprocess.TimeoutExpired as e:
        said = f"the W&B follower did not finish within {e.timeout:.0f} s; stopping it"
        print(f"veeksha: {said}", file=sys.stderr)
        follower.kill()
        follower.wait()
        ok = False
    if not ok:
        _upload_failed(run_dir)
    return ok


def end_follower(follower: subprocess.Popen[bytes]) -> None:
    """The run ended without metrics (raised, interrupted, evaluation failed): its run.json says so
    (RunDir.leave_unevaluated) and the follower ends on it, its W&B run failed and left resumable.
    Stopped when it has not within FOLLOW_END_S (run.json could not be written: disk full)."""
    try:
        follower.wait(FOLLOW_END_S)
    except subprocess.TimeoutExpired:
        pass
    finally:  # (also on a second Ctrl-C while waiting: no follower outlives its run)
        if follower.poll() is None:
            stop_follower(follower)


def stop_follower(follower: subprocess.Popen[bytes]) -> None:
    """End the follower now (SIGTERM: it stops as on Ctrl-C, its W&B run left resumable)."""
    follower.terminate()
    try:
        follower.wait(FOLLOW_MARGIN_S)
    except subprocess.TimeoutExpired:
        follower.kill()
        follower.wait()


# What the uploader does with the run in each mode it acts on.
_UPLOADING = {"online": "uploading to W&B", "offline": "writing an offline W&B run"}


def _upload_interrupted(run_dir: Path) -> None:
    print(
        "veeksha: upload interrupted; the run's results are unchanged. "
        f"Upload it with: veeksha-upload {run_dir}",
        file=sys.stderr,
        flush=True,
    )


def _upload_failed(run_dir: Path) -> None:
    print(
        f"veeksha: upload failed; the run's results are unchanged. Retry with: veeksha-upload {run_dir}",
        file=sys.stderr,
    )


def upload(run_dir: Path, cfg: BenchmarkConfig) -> bool:
    """Hand the finished directory to the uploader, in its own process (the runner never imports wandb).
    Not when W&B is disabled (wandb_disabled_by): the uploader would skip it. `cfg`: the config whose
    wandb section the uploader reads for `run_dir` (a sweep's first run's, a search's benchmark)."""
    disabled_by = wandb_disabled_by(cfg)
    if disabled_by is not None:
        print(f"veeksha: W&B disabled ({disabled_by}): not uploading", flush=True)
        return True
    cmd = [sys.executable, "-m", "veeksha.uploader", str(run_dir), "--wait-lock", f"{UPLOAD_LOCK_WAIT_S:.0f}"]
    doing = _UPLOADING[wandb_mode(cfg)]
    try:  # (the Ctrl-C may come as this is said: the uploader never started, it is told the same)
        print(f"veeksha: {doing}: {' '.join(cmd[2:])}", flush=True)
        ok = _run_uploader(cmd) == 0
    except KeyboardInterrupt:  # the uploader got the Ctrl-C too, and stopped
        _upload_interrupted(run_dir)
        raise
    except OSError as e:
        print(f"veeksha: could not start the uploader: {e}", file=sys.stderr)
        ok = False
    if not ok:
        _upload_failed(run_dir)
    return ok


def _run_uploader(cmd: list[str]) -> int:
    """The uploader's exit code. On Ctrl-C (it got one too: the same process group) it has
    UPLOADER_STOP_WAIT_S to finish its own stop (its exit line, its lock and pending state):
    subprocess.run gave it 0.25 s, then killed it. A SIGTERM is passed on (it may have reached us
    alone), so it stops as on Ctrl-C rather than being killed when the wait ends. A second Ctrl-C
    meanwhile kills it at once."""
    uploader = subprocess.Popen(cmd)
    try:
        # Polled (a timeout makes Popen.wait poll; this one never expires), not one blocking waitpid:
        # importing polars sets SA_RESTART on SIGINT, and a Ctrl-C then ended that wait only when the
        # uploader ended (and the exit status read was lost: 0).
        return uploader.wait(math.inf)
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated):  # it may not have had one: it stops as on Ctrl-C
            uploader.terminate()
        try:
            uploader.wait(UPLOADER_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            pass
        raise
    finally:  # (whatever cut the wait short: no uploader outlives it)
        if uploader.poll() is None:
            uploader.kill()
            uploader.wait()
