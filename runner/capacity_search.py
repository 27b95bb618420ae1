"""Capacity search: the largest arrival rate (or concurrency) whose run meets every SLO.

Phase 1 multiplies the probe by `expansion_factor` until an attempt fails or `max_value` is
reached; phase 2 bisects between the last pass and the first failure down to `precision`.
No value is run twice. Each attempt is an ordinary run directory under `runs/`.

What the spec leaves open, decided here (docs/capacity-search.md says it for users):
- A search needs at least one SLO (benchmark_config.evaluators.0.slos): without one every load
  passed and max_value was reported as the capacity. Refused at load, exit 2, also with --dry-run.
- An attempt's verdict is `pass`, `fail` or `unknown`, judged from its run directory alone (so the
  search and a later `veeksha-run evaluate` judge alike). `unknown` (`passed: null`): it has no
  evaluation (it failed or was cut short), its SLO results, health checks or metrics are missing, or
  its run was interrupted or crashed (its load was not applied to the end). A `failed` run that was
  evaluated (its server died at that load) is a `fail`: that is a finding.
- An attempt whose target load was not applied is a `fail` ("target load not reached"), whatever its
  SLOs say: its session_dispatch_rate health check (rate) or concurrency check (concurrency) failed.
  A client that queued sessions (max_concurrent_sessions, a saturated driver) sent less than asked,
  and TTFC, counted from the client's pick-up, does not see that wait: such attempts passed, and the
  search reported max_value. Each attempt's `reason` says why it failed (or has no verdict).
- More load than the target does not fail an attempt by itself (if its SLOs held under more, they hold
  at the target): a short Poisson attempt sent 3.94 sessions/s at a 2/s target, failed, and the search
  reported a capacity below start_value. Its `reason` notes it ("load above target: ..."). A
  concurrency attempt fails on its load only with fewer sessions in flight than the target on average
  (with a peak above the target too: "target load not held").
- The search cannot steer on an unknown verdict: it stops there (status `failed`, stop_reason
  `evaluation_failed`, exit 1) and says to run `veeksha-run evaluate` on the attempt. It is not
  resumed: `evaluate` re-judges that attempt and rewrites the search's results and attempts CSV.
- An attempt that ran to its end without sending a request (its first arrival after the run's end:
  0.1/s fixed in a 2 s run) has no verdict, and the search stops there saying to lengthen
  benchmark_timeout: judged `fail` ("no request succeeded") it steered the search to a wrong answer.
- The search directory is uploaded (W&B enabled) however the search ends, once its results have their
  final status, as a sweep's summary is: completed, without a verdict, failed, or interrupted during an
  attempt's traffic. Ctrl-C, one rule with a sweep (SearchRun.run): during an attempt's traffic it ends
  that attempt (evaluated and uploaded like any run) and the search, which uploads; anywhere else (a
  server's start or stop, an evaluation, an upload, between attempts) nothing more is uploaded, and it
  says `veeksha-upload DIR`, as when the upload fails.
- The results and the attempts CSV always list every attempt that made a run directory (read back
  from the runs' run.json files), also when the search was interrupted or failed part-way.
- The results name the search's process (`host`, `pid`) from the start. `veeksha-run evaluate` on
  an attempt of a search left `running` by a process that died marks the search `crashed` (final:
  the uploader takes it). Results of a search whose process is alive (or may be, on another host)
  are left to it: it rewrites them after each attempt, from the attempts on disk.
- Attempt i runs with seed `benchmark_config.seed + i`: with one seed every attempt sent the same
  prompts, and an external server's prefix cache answered the later attempts from what the first
  ones sent (lower TTFC, so a higher capacity than there is). An attempt whose prefix_cache health
  check failed (the server held its prompts already: a search run again against a server still up)
  has no verdict, and the search stops there.
- A concurrency search never tries fewer sessions than a fixed `runtime.num_drivers` (a driver with
  no session hung the attempt): start_value below it is refused, and bisection stops at it. The
  benchmark config's own target_concurrent_sessions is not checked against the drivers: every
  attempt replaces it.
- A rate search never probes below the smallest rate a config takes (search_floor: 2e-06 at
  precision 6), nor a concurrency search above the largest concurrency: every attempt's config.yml
  reads back.
- Refused too, before anything is made: a seed whose last attempt's seed + i does not fit in 64 bits
  (its config.yml could not be read back; check_seed_offsets, shared with a sweep), and a
  benchmark_config.output_dir (never used: attempts go under the search's own directory, the
  top-level output_dir).
- The checks a run makes name a run's keys and flags (`client.api_base`, `--client.api_base URL`);
  a search's errors name them under benchmark_config (`--benchmark_config.client.api_base URL`),
  which is what its command line takes (under_benchmark_config).
- The model of an endpoint already up (no server section) is asked for before the search's directory
  is made, as a single run does; a server the search starts is asked once it runs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import typing
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from veeksha.runner.benchmark import (
    check_before_start,
    check_ray_clusters,
    resolve_external_endpoint,
    run_benchmark,
    upload,
    will_upload,
)
from veeksha.runner.capacity_results import (
    EVALUATION_FAILED,
    Attempt,
    attempts_on_disk,
    best_attempt,
    judge,
    results_header,
    unevaluated_attempts,
    write_results,
)
from veeksha.runner.preflight import check_hosts
from veeksha.runner.run_dir import check_output_dir, make_unique_dir, python_argv, stamp, utc_now
from veeksha.shared.config import (
    BenchmarkConfig,
    CapacitySearchConfig,
    FixedIntervals,
    RateTraffic,
    check_seed_offsets,
    search_floor,
)
from veeksha.shared.config_loader import (
    NO_FALLBACKS,
    EnvFallbacks,
    dump_config_yaml,
    load_capacity_search,
)
from veeksha.shared.errors import ConfigError
from veeksha.shared.jsonio import require_folder, write_atomic
from veeksha.shared.paths import (
    CAPSEARCH_ATTEMPTS_CSV,
    CAPSEARCH_DIR_PREFIX,
    CAPSEARCH_RESULTS,
    CAPSEARCH_RUNS_DIR,
    CONFIG_YML,
)
from veeksha.shared.records import (
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_INTERRUPTED,
    RUN_RUNNING,
)

RATE_KNOB = "traffic_scheduler.interval_generator.arrival_rate"
CONCURRENCY_KNOB = "traffic_scheduler.target_concurrent_sessions"


class AttemptInterrupted(Exception):
    """Ctrl-C during an attempt's traffic: its run ended `interrupted` (evaluated and uploaded like any
    run), and the search ends there and uploads. Not a KeyboardInterrupt: that one, from anywhere
    else, uploads nothing more."""


class NoVerdict(Exception):
    """An attempt the search cannot judge: it cannot tell which way to go on."""

    def __init__(self, attempt: Attempt, run_dir: Path) -> None:
        super().__init__(attempt.why_unknown)
        self.attempt = attempt
        self.run_dir = run_dir


def knob_of(cfg: BenchmarkConfig) -> str:
    return RATE_KNOB if isinstance(cfg.traffic_scheduler, RateTraffic) else CONCURRENCY_KNOB


def with_value(cfg: BenchmarkConfig, value: float) -> BenchmarkConfig:
    """A copy of `cfg` with the searched knob (arrival rate or concurrency) set to `value`."""
    traffic = cfg.traffic_scheduler
    if isinstance(traffic, RateTraffic):
        gen = traffic.interval_generator
        if isinstance(gen, FixedIntervals):
            gen = replace(gen, arrival_rate=float(value), interval=None)
        else:
            gen = replace(gen, arrival_rate=float(value))
        return replace(cfg, traffic_scheduler=replace(traffic, interval_generator=gen))
    return replace(cfg, traffic_scheduler=replace(traffic, target_concurrent_sessions=int(value)))


def rounder(search: CapacitySearchConfig, integer: bool) -> Callable[[float], float]:
    """Values on the search's grid (integers, or `precision` decimals), never above max_value:
    rounding 10.006 to 10.01 would probe a load the search was told not to. Never below the grid's
    floor either: concurrency not below min_sessions (bisection would otherwise try 1 session on 2
    drivers), a rate not below the smallest a config takes (search_floor: halving toward 0 at
    precision 6 reached 1e-06, and that attempt's config.yml could not be read back)."""
    scale = 1 if integer else 10**search.precision
    # The grid's last value; rounded first, as 2.3 * 100 is 229.99999999999997 in binary.
    top = max(math.floor(round(search.max_value * scale, 6)) / scale, 1 / scale)
    if integer:
        low = min_sessions(search.benchmark_config)
        return lambda v: min(max(low, round(v)), int(top))
    floor = search_floor(False, search.precision)
    return lambda v: min(max(floor, round(v, search.precision)), top)


def min_sessions(cfg: BenchmarkConfig) -> int:
    """The fewest concurrent sessions an attempt may run: each driver runs its share of them, and a
    driver with none spun without end (num_drivers auto resolves to at most the sessions)."""
    n = cfg.runtime.num_drivers
    return n if isinstance(n, int) else 1


def check_search(search: CapacitySearchConfig, integer: bool) -> None:
    """What makes a search unable to answer, found before anything is made (exit 2). A start_value
    that rounds to 0 cannot reach here: the config's own check (CapacitySearchConfig._off_grid)
    refuses a value below the grid's first point, and rounding never takes one at or above it to 0."""
    low = min_sessions(search.benchmark_config)
    if integer and search.start_value < low:
        raise ConfigError(
            f"config error at start_value: {search.start_value:g} is not allowed with "
            f"benchmark_config.runtime.num_drivers {low} (each driver needs a session of its own, and "
            f"an attempt with fewer sessions than drivers hangs); use start_value >= {low}, or fewer drivers"
        )
    seed, attempts = search.benchmark_config.seed, search.max_iterations  # attempt i: seed + i
    check_seed_offsets(seed, attempts, key="benchmark_config.seed", given=f"max_iterations {attempts}")


def unused_output_dir_note(search: CapacitySearchConfig) -> str | None:
    """A search writes its attempts under its own directory, so benchmark_config.output_dir is not
    used. Said, not refused: a benchmark_config `!include`d from a run's own config file sets it."""
    given = search.benchmark_config.output_dir
    if given == BenchmarkConfig().output_dir:
        return None
    return (
        f"veeksha: note: benchmark_config.output_dir {given!r} is not used: a capacity search writes "
        f"its attempts under {search.output_dir}/{CAPSEARCH_DIR_PREFIX}*/{CAPSEARCH_RUNS_DIR} "
        "(the top-level output_dir)"
    )


def check_slos(search: CapacitySearchConfig) -> None:
    """Without an SLO every load passes, and max_value is reported as the capacity."""
    if not search.benchmark_config.slos:
        raise ConfigError(
            "config error at benchmark_config.evaluators.0.slos: no SLO is set, and a capacity search "
            "finds the largest load that meets its SLOs (without one, every load passes); add one, e.g. "
            "benchmark_config.evaluators: [{type: performance, slos: [{name: p99 ttfc, metric: ttfc, "
            "percentile: 0.99, value: 0.5}]}]"
        )


def run_capacity_search(
    path: Path,
    overrides: list[tuple[str, str]],
    fallbacks: EnvFallbacks = NO_FALLBACKS,
    *,
    dry_run: bool = False,
) -> int:
    search = load_capacity_search(path, overrides, fallbacks)
    with benchmark_keys_under_search():
        return _search(search, dry_run)


def _search(search: CapacitySearchConfig, dry_run: bool) -> int:
    base = search.benchmark_config
    knob = knob_of(base)
    integer = knob == CONCURRENCY_KNOB
    rnd = rounder(search, integer)
    check_search(search, integer)
    check_hosts([base], prefix="benchmark_config.")
    check_before_start(base)
    check_ray_clusters([base])  # else found by the first attempt, in a search directory made for nothing
    check_output_dir(Path(search.output_dir))
    check_slos(search)
    note = unused_output_dir_note(search)
    if note:
        print(note, flush=True)
    if dry_run:  # every check a search makes before its first attempt has passed; nothing is made
        print(describe_plan(search, knob, rnd, integer))
        return 0
    # An endpoint already up names its model now, before the search's directory (as a single run).
    search = replace(search, benchmark_config=resolve_external_endpoint(base))
    return SearchRun(search, knob).run(rnd, integer)


# ---------------------------------------------------------------- the keys errors name


def _section_keys() -> dict[str, frozenset[str] | None]:
    """Each section of a benchmark config with the keys it holds (every variant's); None for a list,
    whose items are named by index (evaluators.0.slos)."""
    hints = typing.get_type_hints(BenchmarkConfig)
    sections: dict[str, frozenset[str] | None] = {}
    for f in dataclasses.fields(BenchmarkConfig):
        if typing.get_origin(hints[f.name]) is list:
            sections[f.name] = None
            continue
        classes = list((f.metadata.get("variants") or {}).values()) or [hints[f.name]]
        keys = {g.name for c in classes if dataclasses.is_dataclass(c) for g in dataclasses.fields(c)}
        if keys:  # (seed and output_dir are values, not sections)
            sections[f.name] = frozenset(keys)
    return sections


SECTION_KEYS = _section_keys()
# `section.key`, or the flag `--section.key`, standing on its own: not inside a longer key path
# (`benchmark_config.client.model`), a URL, a file name or a quoted value.
_KEY_PATH = re.compile(
    r"(?<![\w./'\"-])(--)?(" + "|".join(sorted(SECTION_KEYS, key=len, reverse=True)) + r")\.(\w+)"
)


def under_benchmark_config(message: str) -> str:
    """`message` (of a check a run makes) with each key path and flag of a benchmark config named as a
    capacity search's file and command line have it: under benchmark_config."""

    def prefixed(m: re.Match[str]) -> str:
        flag, section, key = m.group(1) or "", m.group(2), m.group(3)
        keys = SECTION_KEYS[section]
        if key.isdigit() if keys is None else key in keys:  # not `client.json`, a file's name
            return f"{flag}benchmark_config.{section}.{key}"
        return m.group(0)

    return _KEY_PATH.sub(prefixed, message)


@contextmanager
def benchmark_keys_under_search() -> Iterator[None]:
    """The one boundary where a search runs a run's checks (and its attempts): their ConfigErrors
    named `client.api_base` and `--client.api_base URL`, a flag the search refuses as unknown."""
    try:
        yield
    except ConfigError as e:
        raise ConfigError(under_benchmark_config(str(e))) from e


class SearchRun:
    """One search under way: its directory, and the results it keeps in step with its attempts."""

    def __init__(self, search: CapacitySearchConfig, knob: str) -> None:
        self.search, self.knob = search, knob
        self.root = make_unique_dir(Path(search.output_dir), f"{CAPSEARCH_DIR_PREFIX}{stamp(utc_now())}")
        (self.root / CAPSEARCH_RUNS_DIR).mkdir()
        write_atomic(self.root / CONFIG_YML, dump_config_yaml(search))
        self.header = results_header(uuid.uuid4().hex, search, knob)
        self.tried: list[float] = []
        self.write()  # from the start: the process it names tells a killed search from a live one
        print(f"veeksha: capacity search over {knob} in {self.root}", flush=True)

    def write(self, status: str = RUN_RUNNING, stop_reason: str | None = None) -> list[Attempt]:
        """The results and attempts CSV from the attempts on disk: also one whose run raised."""
        self.header.update(status=status, stop_reason=stop_reason)
        history = attempts_on_disk(self.root, self.header["id"], self.search.max_error_rate)
        write_results(self.root, self.header, history)
        return history

    def attempt(self, value: float, rnd: Callable[[float], float]) -> Attempt | None:
        """Run and judge one attempt; None when the value was tried or no attempt is left. Raises
        AttemptInterrupted when a Ctrl-C ended its traffic (KeyboardInterrupt, from run_benchmark,
        when one came anywhere else), NoVerdict when it cannot be judged."""
        value = rnd(value)
        if value in self.tried or len(self.tried) >= self.search.max_iterations:
            return None
        info = {"id": self.header["id"], "iteration": len(self.tried), "knob": self.knob, "value": value}
        self.tried.append(value)
        runs_dir = self.root / CAPSEARCH_RUNS_DIR
        # Moved or deleted since the last attempt: the run would make it again, a search of one attempt.
        require_folder(runs_dir)
        cfg = with_value(self.search.benchmark_config, value)
        # Each attempt its own sessions (seed + iteration, so the search stays reproducible): with one
        # seed every attempt sent the same prompts, and a server's prefix cache answered the later ones.
        cfg = replace(cfg, seed=cfg.seed + info["iteration"])
        result = run_benchmark(cfg, runs_dir, argv=python_argv(), capacity_search=info)
        a = judge(result.run_dir, self.search.max_error_rate)
        interrupted = result.status == RUN_INTERRUPTED
        shown = "INTERRUPTED" if interrupted else "NO VERDICT" if a.passed is None else a.verdict.upper()
        # (No verdict: said below, with what to do.)
        why = f" ({a.reason})" if a.reason and a.passed is not None else ""
        print(f"veeksha: attempt {a.iteration}: {self.knob}={value} → {shown}{why}")
        self.write()
        if interrupted:
            raise AttemptInterrupted
        if a.passed is None:
            raise NoVerdict(a, result.run_dir)
        return a

    def run(self, rnd: Callable[[float], float], integer: bool) -> int:
        """The search to its end; each way it ends writes the results' final status, then uploads
        the search directory (its summary run, the `best` tag), as a sweep does. Ctrl-C, one rule with
        a sweep (sweep.run_sweep): during an attempt's traffic it ends that attempt (evaluated and
        uploaded like any run) and the search, which uploads. Anywhere else (a server's start or stop,
        an evaluation, an upload, between attempts) it stops at once: nothing more is uploaded, and the
        command to upload later is printed."""
        try:
            stop_reason = search_loop(self.search, lambda v: self.attempt(v, rnd), rnd, integer)
        except AttemptInterrupted:
            self.write(RUN_INTERRUPTED)
            print("veeksha: capacity search interrupted; results so far are written", flush=True)
            self.upload_search(say_unevaluated=True)
            return 130
        except KeyboardInterrupt:
            self.write(RUN_INTERRUPTED)
            print("veeksha: capacity search interrupted; results so far are written", flush=True)
            self.say_how_to_upload("stopped by Ctrl-C")
            return 130
        except NoVerdict as e:
            self.write(RUN_FAILED, EVALUATION_FAILED)
            uploaded = self.upload_search()
            print(self.no_verdict_message(e), flush=True)  # (what to evaluate, then upload)
            return 1 if uploaded is not None else 130
        except Exception:  # an attempt that could not run (its server did not start, a full disk)
            self.write(RUN_FAILED)
            print("veeksha: capacity search failed; results so far are written", flush=True)
            self.upload_search(say_unevaluated=True)  # never raises: the search's error is the one told
            raise  # the command's one line says why
        return self.finish(self.write(RUN_COMPLETED, stop_reason), stop_reason)

    def upload_search(self, say_unevaluated: bool = False) -> bool | None:
        """The search directory to W&B, when enabled: True uploaded (or not enabled), False failed,
        None stopped by Ctrl-C (not started again). Never raises: a search that failed still raises
        its own error, and whatever went wrong ends with the command that uploads it later. With
        `say_unevaluated`, an attempt left without metrics (its evaluation cut short) is named with
        what finishes it: the uploader skips the summary run until then."""
        cfg = self.search.benchmark_config
        if not cfg.wandb.enabled:
            return True
        try:
            ok = upload(self.root, cfg)  # (says how to retry when the uploader fails)
            if ok and say_unevaluated:
                self.say_unevaluated()
            return ok
        except KeyboardInterrupt:  # (upload() said how to upload it later)
            return None
        except Exception as e:
            self.upload_skipped(f"its upload failed: {type(e).__name__}: {e}")
            return False

    @property
    def uploads(self) -> bool:
        """Whether the search is uploaded (W&B enabled, and not disabled by the environment)."""
        return will_upload(self.search.benchmark_config)

    def say_how_to_upload(self, why: str) -> None:
        """The search is not uploaded now (`why`): what finishes an attempt left without metrics, if
        any, else only the command that uploads it."""
        if not self.say_unevaluated():
            self.upload_skipped(why)

    def say_unevaluated(self) -> bool:
        """Name an attempt left without metrics (its evaluation cut short) and what finishes it, then
        the upload: the uploader skips the summary run until then. Whether there was one to name."""
        waiting = unevaluated_attempts(self.root, self.header["id"]) if self.uploads else []
        if waiting:
            print(
                f"veeksha: {len(waiting)} attempt(s) have no metrics ({waiting[0]}); "
                f"`veeksha-run evaluate {self.root}` writes them, then upload the search with: "
                f"veeksha-upload {self.root}",
                file=sys.stderr,
                flush=True,
            )
        return bool(waiting)

    def upload_skipped(self, why: str) -> None:
        if self.uploads:
            print(
                f"veeksha: the capacity search is not uploaded ({why}); upload it with: "
                f"veeksha-upload {self.root}",
                file=sys.stderr,
                flush=True,
            )

    def no_verdict_message(self, e: NoVerdict) -> str:
        a = e.attempt
        stopped = (
            f"veeksha: capacity search stopped: whether {self.knob}={a.value} meets the SLOs is unknown "
            f"({a.why_unknown}), so it cannot tell which way to go on.\n"
        )
        if a.nothing_sent:  # evaluating it again judges it alike: only a longer run can tell
            return stopped + "veeksha: to search further, start a new search with a longer run"
        if a.cache_answered:  # evaluating it again judges it alike: only prompts the server lacks can tell
            return stopped + (
                "veeksha: to search further, restart the server (or reset its prefix cache), or set "
                "another benchmark_config.seed, then start a new search"
            )
        then_upload = (
            f", then `veeksha-upload {self.root}` (its W&B runs, with that verdict)" if self.uploads else ""
        )
        return stopped + (
            f"veeksha: run `veeksha-run evaluate {e.run_dir}`: it judges that attempt and rewrites "
            f"{CAPSEARCH_RESULTS} and {CAPSEARCH_ATTEMPTS_CSV} in {self.root}{then_upload}; to search "
            "further, start a new search"
        )

    def finish(self, history: list[Attempt], stop_reason: str) -> int:
        best = best_attempt(history)
        found = best.value if best else "none (no attempt passed)"
        print(f"veeksha: best {self.knob} = {found} ({STOP_REASONS[stop_reason]})")
        if self.upload_search() is None:  # the summary run and the `best` tag; Ctrl-C'd: as one
            return 130
        if history and not any(a.num_completed for a in history):
            # Not a capacity: the endpoint, the model or the key is wrong, at every load.
            print(
                f"veeksha: no attempt had a successful request; see {history[0].run_dir} in {self.root}",
                flush=True,
            )
            return 1
        # The search ran to its end: attempts that failed (a server crashing at a load) are its findings.
        return 0


# Why a search that ran to its end stopped (results "stop_reason"), and how the console says it. One
# that stopped at an attempt it could not judge has stop_reason EVALUATION_FAILED.
STOP_REASONS = {
    "converged": "converged to the precision",
    "max_value": "every attempt passed up to max_value",
    "max_iterations": "stopped by max_iterations before converging",
}


def search_loop(
    search: CapacitySearchConfig,
    attempt: Callable[[float], Attempt | None],
    rnd: Callable[[float], float],
    integer: bool,
) -> str:
    """Expand, then bisect; returns why it stopped (a STOP_REASONS key)."""
    last_pass: float | None = None
    first_fail: float | None = None
    value = search.start_value
    step = 1 if integer else 10 ** (-search.precision)
    # Phase 1: expand until a failure or the maximum.
    while True:
        a = attempt(min(value, search.max_value))
        if a is None:
            return "max_iterations"
        if not a.passed:
            first_fail = a.value
            break
        last_pass = a.value
        if a.value >= rnd(search.max_value):
            return "max_value"
        # Rounding must not turn the next probe into this one (1 × 1.2 → 1 for concurrency).
        value = max(rnd(a.value * search.expansion_factor), a.value + step)
    # Phase 2: bisect between the last pass (or zero) and the first failure.
    lo, hi = (last_pass or 0.0), first_fail
    while hi - lo > step:
        mid = rnd((lo + hi) / 2)
        if mid <= lo or mid >= hi:
            break
        a = attempt(mid)
        if a is None:
            return "max_iterations"
        if a.passed:
            lo = a.value
        else:
            hi = a.value
    return "converged"


def describe_plan(
    search: CapacitySearchConfig, knob: str, rnd: Callable[[float], float], integer: bool
) -> str:
    """What a dry run prints: the probes of phase 1 while every attempt passes (the search loop
    itself, run on attempts that all pass, so the plan cannot drift from the search), then phase 2."""
    probes: list[float] = []

    def passing(value: float) -> Attempt | None:
        value = rnd(value)
        if value in probes or len(probes) >= search.max_iterations:  # as attempt() in the search
            return None
        probes.append(value)
        return Attempt(len(probes) - 1, value, True, "", RUN_COMPLETED, 0.0, [])

    search_loop(search, passing, rnd, integer)
    grid = "whole numbers" if integer else f"{search.precision} decimal(s)"
    return "\n".join(
        [
            f"veeksha-run: capacity search config is valid; it searches {knob}",
            f"  probes while attempts pass: {', '.join(f'{v:g}' for v in probes)} "
            f"(x{search.expansion_factor:g} each, up to max_value {search.max_value:g})",
            f"  after the first failure: bisects between it and the last pass, to {grid}",
            f"  at most {search.max_iterations} attempts, written under {search.output_dir}/",
        ]
    )
