"""The server's own metrics (queue, KV-cache use, prefix-cache hits, ...), scraped during the run.

A thread of the recorder process (never the driver) fetches the server's Prometheus text as the drivers
are about to be told to start (every counter's baseline, waited for), then every
`server_metrics.interval_seconds` and as the run stops, and appends one row per scrape to
metrics/server_metrics.csv: `elapsed_s`, then
one column per series, named as the server spells it (`vllm:num_requests_running`, ...). Gauges are
kept as values, counters become per-second rates over the interval; histograms and summaries are left
out. Series of one name with several label sets (vLLM V1 labels each engine of a data-parallel
server) are combined: counters are summed (the whole server's rate), gauges averaged (a fraction such
as vllm:kv_cache_usage_perc stays a fraction; a count is then the mean per label set). Rates follow
Prometheus rate(), label set by label set: a counter that went down was reset (it began again at 0, so
its new value is the increase), a label set first seen counts from 0 (a counter name first seen after
the first scrape too), one missing from a scrape adds nothing and counts from its last value when it
returns; a rate is never negative. A NaN sample is no measurement: left out (an empty cell, never
`nan`). A name that would need CSV quoting (prometheus_client reads quoted UTF-8 names:
`{"a,b"} 1`) or holds a control character is left out: the file's readers (evaluation, the uploader,
the live follower) split plain lines at commas. The columns are those of the first successful scrape;
a series first seen later (vLLM's labelled counters have no sample until a request finishes) widens
the header: the file is rewritten once, atomically, its earlier rows with empty cells, and appended
to again. A failed scrape (an unreachable endpoint, text the parser refuses) is counted and the run
goes on.
"""

from __future__ import annotations

import csv
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families
from veeksha.runner.background import to_background
from veeksha.shared.config import BenchmarkConfig
from veeksha.shared.jsonio import write_atomic
from veeksha.shared.redact import scrub_list, scrub_text, secret_values

PROBE_TIMEOUT_S = 2.0
BASELINE_WAIT_S = PROBE_TIMEOUT_S  # the most the drivers' start waits for the baseline scrape
# A failed scrape, counted, never raised: InvalidURL is no HTTPError (a malformed server_metrics.url)
FETCH_ERRORS = (httpx.HTTPError, httpx.InvalidURL, ValueError, OSError)
START_POLL_S = 0.02  # how often the scraper looks whether the run has started
MIN_LAST_INTERVAL_S = 0.1  # the scrape at the stop, unless the last one was this recent
KEPT_TYPES = ("gauge", "counter", "unknown", "untyped")


def metrics_url(cfg: BenchmarkConfig) -> str:
    """server_metrics.url, else /metrics on the host of the (resolved) api_base."""
    if cfg.server_metrics.url:
        return cfg.server_metrics.url
    parts = urlsplit(cfg.client.api_base or "")
    return urlunsplit((parts.scheme, parts.netloc, "/metrics", "", ""))


LabelSet = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Series:
    """One series name of a scrape: its family's type and its value per label set."""

    kind: str
    values: dict[LabelSet, float]

    @property
    def value(self) -> float:
        """Counters summed over label sets, anything else (a gauge) averaged."""
        total = sum(self.values.values())
        return total if self.kind == "counter" else total / len(self.values)


def parse(text: str) -> dict[str, tuple[str, float]]:
    """Series name -> (its family's type, its value over label sets: Series.value)."""
    return {name: (series.kind, series.value) for name, series in parse_series(text).items()}


def parse_series(text: str) -> dict[str, Series]:
    """Series name -> Series, for the gauges and counters of Prometheus `text`. ValueError for text the
    parser refuses, whatever it raised (IndexError on some malformed lines)."""
    out: dict[str, Series] = {}
    try:
        for family in text_string_to_metric_families(text):
            if family.type not in KEPT_TYPES:
                continue
            for sample in family.samples:
                # A counter's creation time is no measurement; a name with a comma, a quote or a
                # control character would break the plain CSV line (_csv_line).
                if sample.name.endswith("_created") or not _plain(sample.name):
                    continue
                value = float(sample.value)
                if math.isnan(value):  # no measurement (a gauge not yet known): as if not there
                    continue
                series = out.setdefault(sample.name, Series(family.type, {}))
                series.values[tuple(sorted(sample.labels.items()))] = value
    except ValueError:
        raise
    except Exception as e:  # the parser's own bug on odd input: a failed scrape, not a dead thread
        raise ValueError(f"unreadable Prometheus text ({type(e).__name__}: {e})") from None
    return out


def counter_rate(now: Series, before: Mapping[LabelSet, float], dt: float) -> float:
    """Per second over `dt`, as Prometheus rate() counts it, label set by label set: a decrease is a
    reset (the new value is the increase), a label set never seen before counts from 0. `before`: the
    last value seen of each label set, in whichever earlier scrape."""
    increase = 0.0
    for labels, value in now.values.items():
        previous = before.get(labels, 0.0)
        increase += value - previous if value >= previous else value
    return increase / dt


def fetch(client: httpx.Client, url: str) -> dict[str, Series]:
    response = client.get(url)
    response.raise_for_status()
    return parse_series(response.text)


def probe(url: str, secrets: Iterable[str] = ()) -> str | None:
    """None when `url` answers in Prometheus text format with at least one series, else why not,
    without the URL's credentials or `secrets` (the run's: driver.http.client.run_secret_values)."""
    try:
        with httpx.Client(timeout=PROBE_TIMEOUT_S, trust_env=False) as client:
            series = fetch(client, url)
    except FETCH_ERRORS as e:
        # httpx names the URL (a ?token= in it); the parser quotes the server's line, which may echo
        # the server's own key or one it inherited. Scrubbed before the cut to one line.
        hidden = scrub_list([*secret_values(url), *secrets])
        return scrub_text(f"{type(e).__name__}: {e}", hidden).splitlines()[0]
    return None if series else "no gauge or counter series"


class Scraper:
    """Scrapes until stopped; `elapsed` gives seconds since the run started (None before)."""

    def __init__(self, url: str, interval_s: float, csv_path: Path, elapsed: Callable[[], float | None]):
        self.url, self.interval_s, self.csv_path, self.elapsed = url, interval_s, csv_path, elapsed
        self.failures = 0
        self.rows = 0
        self._busy_s = 0.0  # time inside scrapes: a slow endpoint, not a lack of CPU, takes it
        self._columns: list[str] | None = None
        self._previous_t: float | None = None  # when the last scrape was written
        # The last value seen of each counter label set, by name, whichever scrape it was in: a label
        # set missing from one scrape (a failed engine, a lagging exporter) is compared, when it comes
        # back, with its last value, not counted whole again.
        self._last: dict[str, dict[LabelSet, float]] = {}
        self._baseline_wanted = threading.Event()  # take_baseline was called
        self._baseline_taken = threading.Event()  # ...and the thread has answered it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="veeksha-server-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def take_baseline(self) -> None:
        """The first scrape (every counter's baseline), as the drivers are about to be told to start
        (Recorder.run's `before_go`, once all are ready): the thread takes it at once, still at the
        recorder's priority, and this waits for it, at most BASELINE_WAIT_S. Taken after the start
        at idle priority, it could come after a busy machine's first requests, which then counted
        nowhere (a loaded CI's 0.6 s run: its prefix_cache check saw no lookup and was skipped);
        taken before the drivers were spawned (a tokenizer's load, a Ray cluster's actors), the run
        would be credited with whatever the counters did meanwhile."""
        self._baseline_wanted.set()
        self._baseline_taken.wait(BASELINE_WAIT_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def shortfall(self) -> str | None:
        """Why far fewer scrapes were taken than the run's length allows, or None. At idle priority
        the scraper gets next to no CPU while every core is busy with other work: say so, rather
        than leave a run with no server metrics (or a few rows) and no word why."""
        t = self.elapsed()
        expected = int((t - self._busy_s) / self.interval_s) if t is not None else 0
        taken = self.rows + self.failures
        if expected < 3 or taken >= expected / 2:
            return None
        return (
            f"{taken} of about {expected} scrapes were taken: the scraper runs at idle priority, so as "
            "not to delay the drivers, and got little CPU (were the machine's cores busy with other work?)"
        )

    def _run(self) -> None:
        with httpx.Client(timeout=max(self.interval_s, PROBE_TIMEOUT_S), trust_env=False) as client:
            # The baseline (every counter's: a rate needs two scrapes; one at the start if there is
            # none), one per interval, and one at the stop: else the first and the last interval
            # went uncounted, and a run shorter than two intervals had no counter rate at all.
            baseline = self._fetch_baseline(client)  # before any request: at normal priority
            # A scrape (HTTP request, text parsing) costs milliseconds of CPU on the core the driver
            # may share: the rest run at background priority, taking only CPU the driver leaves
            # (measured: the once-a-second scrape was the largest single cluster of late dispatches
            # at 400 requests/s).
            to_background()
            while self.elapsed() is None:
                if self._stop.wait(START_POLL_S):
                    return  # stopped before the run started: nothing is written
            self._scrape(client, baseline)
            while not self._stop.wait(self.interval_s):
                self._scrape(client)
            t, last = self.elapsed(), self._previous_t
            # Not a few milliseconds after the last scrape: a rate over so short a time is noise.
            if last is None or (t is not None and t - last >= MIN_LAST_INTERVAL_S):
                self._scrape(client)

    def _fetch_baseline(self, client: httpx.Client) -> tuple[dict[str, Series], float] | None:
        """(series, monotonic time) of the scrape take_baseline asks for. None when it failed (counted),
        or when the run started, or was stopped, without asking."""
        try:
            while not self._baseline_wanted.wait(START_POLL_S):
                if self._stop.is_set() or self.elapsed() is not None:
                    return None
            try:
                return fetch(client, self.url), time.monotonic()
            except FETCH_ERRORS:
                self.failures += 1
                return None
        finally:
            self._baseline_taken.set()

    def _scrape(self, client: httpx.Client, taken: tuple[dict[str, Series], float] | None = None) -> None:
        """Fetch and write a row; or write `taken`, the baseline (series, monotonic time)."""
        t = self.elapsed()
        if t is None:
            return
        began = time.monotonic()
        try:
            if taken is None:
                self._write(t, fetch(client, self.url))
            else:
                series, at = taken
                self._write(t - (began - at), series)  # its time on the run's clock
        except FETCH_ERRORS:  # counted, reported at the end
            self.failures += 1
        self._busy_s += time.monotonic() - began

    def _write(self, t: float, series: dict[str, Series]) -> None:
        if self._columns is None:
            self.csv_path.write_text(_csv_line(["elapsed_s", *sorted(series)]))
            self._columns = sorted(series)
        elif not series.keys() <= set(self._columns):
            self._widen(sorted({*self._columns, *series}))
        cells = [f"{t:.3f}", *(_cell(self._value(name, t, series)) for name in self._columns)]
        with self.csv_path.open("a") as f:
            f.write(_csv_line(cells))
        self.rows += 1
        self._previous_t = t
        for name, now in series.items():
            if now.kind == "counter":
                self._last.setdefault(name, {}).update(now.values)

    def _widen(self, columns: list[str]) -> None:
        """Rewrite the file under `columns` (the old ones and the new series), the rows written so far
        with empty cells for the new ones. Rare (a series that first appears mid-run), so reading the
        whole file back costs nothing that matters. Atomic: a reader (the live uploader) sees the old
        file or the new one, never a mix; columns are kept only once the new file is there."""
        with self.csv_path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        header = ["elapsed_s", *columns]
        lines = [_csv_line(header), *(_csv_line([row.get(name, "") for name in header]) for row in rows)]
        write_atomic(self.csv_path, "".join(lines))
        self._columns = columns

    def _value(self, name: str, t: float, series: dict[str, Series]) -> float | None:
        if name not in series:
            return None
        now = series[name]
        if now.kind != "counter":
            return now.value
        if self._previous_t is None or t <= self._previous_t:
            return None  # a rate needs two scrapes
        # A name first seen now (vLLM's labelled counters, after their first request) counts from 0,
        # as a label set first seen does.
        return counter_rate(now, self._last.get(name, {}), t - self._previous_t)


def _cell(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else repr(value)


def _plain(name: str) -> bool:
    """A series name that a CSV cell holds without quoting."""
    return name.isprintable() and "," not in name and '"' not in name


def _csv_line(cells: list[str]) -> str:
    # Series names (_plain) and numbers need no CSV quoting.
    return ",".join(cells) + "\n"
