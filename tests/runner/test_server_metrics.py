"""Scraping the server's own metrics: the parser, the scraper against the simulated server's /metrics
over real loopback HTTP, failures counted (never raised), and a whole run writing server_metrics.csv."""

from __future__ import annotations

import csv
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest
from veeksha.runner import server_metrics
from veeksha.runner.driver.http.client import run_secret_values
from veeksha.runner.evaluation.appended_csv import read_appended_frame
from veeksha.runner.evaluation.summary import server_cache_tokens
from veeksha.runner.server_launcher import start_server
from veeksha.runner.server_metrics import Scraper, parse, probe
from veeksha.shared.config_loader import build_benchmark_config
from veeksha.shared.jsonio import write_atomic
from veeksha.shared.records import VLLM_CACHE_HITS, VLLM_CACHE_QUERIES
from veeksha.uploader.reader import read_appended_csv

from tests.runner.helpers import all_text_under, only_run_dir, run_cli, serving
from tests.runner.simserver.test_server import FAST, root, sim_server
from tests.uploader.conftest import make_home, upload
from tests.uploader.wandb_records import offline_run_dirs, read_offline_run

TEXT = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="a"} 2
vllm:num_requests_running{model_name="b"} 3
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model_name="a"} 100
vllm:generation_tokens_created{model_name="a"} 1.7e9
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="1.0"} 4
vllm:e2e_request_latency_seconds_count 4
vllm:e2e_request_latency_seconds_sum 2.5
"""


@pytest.fixture(autouse=True)
def scrapers_at_normal_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Scraper threads these tests start stay at normal priority. At idle priority a test machine
    whose cores are all busy (the full suite, plus any other job) starves them for as long as it
    likes: with two busy loops beside the suite, three of these tests failed. What they check is the
    scraping; the runs started through the CLI below keep the real priority."""
    monkeypatch.setattr(server_metrics, "to_background", lambda: "")


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


class MetricsText(BaseHTTPRequestHandler):
    """A /metrics endpoint that answers text() to every GET."""

    def text(self) -> str:
        raise NotImplementedError

    def do_GET(self) -> None:
        body = self.text().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_gauges_are_averaged_and_counters_summed_over_labels() -> None:
    assert parse(TEXT) == {
        "vllm:num_requests_running": ("gauge", 2.5),
        "vllm:generation_tokens_total": ("counter", 100.0),
    }


def test_a_fraction_of_a_data_parallel_server_stays_a_fraction() -> None:
    # vLLM V1 labels each engine's series: two engines' KV-cache use was shown summed, as 1.7.
    text = (
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0"} 0.8\n'
        'vllm:kv_cache_usage_perc{engine="1"} 0.9\n'
        "# TYPE vllm:prompt_tokens_total counter\n"
        'vllm:prompt_tokens_total{engine="0"} 30\n'
        'vllm:prompt_tokens_total{engine="1"} 70\n'
    )
    assert parse(text) == {
        "vllm:kv_cache_usage_perc": ("gauge", pytest.approx(0.85)),
        "vllm:prompt_tokens_total": ("counter", 100.0),
    }


def test_the_simulated_server_answers_the_probe_and_a_json_endpoint_does_not() -> None:
    with sim_server(**FAST) as handle:
        assert probe(f"{root(handle)}/metrics") is None
        assert probe(f"{root(handle)}/health") is not None


def test_the_scraper_writes_gauges_and_counter_rates(tmp_path: Path) -> None:
    csv_path = tmp_path / "server_metrics.csv"
    start = time.monotonic()
    with sim_server(**FAST) as handle:
        scraper = Scraper(f"{root(handle)}/metrics", 0.2, csv_path, lambda: time.monotonic() - start)
        scraper.start()
        wait_until(lambda: scraper.rows >= 1)  # a first scrape before the tokens: rates then show them
        body = {
            "model": "m",
            "max_tokens": 50,
            "ignore_eos": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        with httpx.Client(base_url=handle.api_base, timeout=10, trust_env=False) as c:
            for _ in range(5):
                c.post("/chat/completions", json=body).raise_for_status()
        wait_until(lambda: scraper.rows >= 3)
        scraper.stop()
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert scraper.failures == 0 and len(rows) == scraper.rows >= 3
    assert "vllm:kv_cache_usage_perc" in rows[0] and "vllm:num_requests_waiting" in rows[0]
    rates = [float(r["vllm:generation_tokens_total"]) for r in rows[1:]]
    assert rows[0]["vllm:generation_tokens_total"] == ""  # a rate needs two scrapes
    assert all(r >= 0 for r in rates) and max(rates) > 0  # tokens per second, not a running total


class LateCounterMetrics(MetricsText):
    """A /metrics like vLLM's: a labelled counter (vllm:request_success_total) has no sample until
    a request finishes, here from the third scrape on, 4 more each scrape."""

    scrapes = 0
    lock = threading.Lock()

    def text(self) -> str:
        with LateCounterMetrics.lock:
            LateCounterMetrics.scrapes += 1
            n = LateCounterMetrics.scrapes
        text = "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 1\n"
        if n >= 3:
            text += (
                "# TYPE vllm:request_success_total counter\n"
                f'vllm:request_success_total{{finished_reason="stop"}} {4 * n}\n'
            )
        return text


def test_a_series_that_first_appears_after_the_first_scrape_gets_its_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rewrites = []

    def counted_write_atomic(path: Path, data: bytes | str) -> None:
        rewrites.append(path)
        write_atomic(path, data)

    # Not there before the fix: the count then stays 0 and the header check below fails first.
    monkeypatch.setattr(server_metrics, "write_atomic", counted_write_atomic, raising=False)
    csv_path = tmp_path / "server_metrics.csv"
    start = time.monotonic()
    with serving(LateCounterMetrics) as api_base:
        url = api_base.removesuffix("/v1") + "/metrics"
        scraper = Scraper(url, 0.1, csv_path, lambda: time.monotonic() - start)
        scraper.start()
        wait_until(lambda: scraper.rows >= 6)
        scraper.stop()
    with csv_path.open() as f:
        header, *rows = list(csv.reader(f))
    assert header == ["elapsed_s", "vllm:num_requests_running", "vllm:request_success_total"]
    assert scraper.failures == 0 and len(rows) == scraper.rows >= 6
    assert all(len(row) == len(header) for row in rows)
    # Not yet there, then counted from 0 as a label set first seen is (it was 0 before its first sample).
    assert [row[2] for row in rows[:2]] == ["", ""]
    assert all(float(row[2]) > 0 for row in rows[2:])
    assert rewrites == [csv_path]  # widened once, not on every later scrape
    # The uploader reads it as any other: the earlier rows simply lack the series.
    read_header, read_rows, cut_off = read_appended_csv(csv_path)
    assert read_header == header and cut_off is None and len(read_rows) == len(rows)
    assert "vllm:request_success_total" not in read_rows[0]
    assert read_rows[-1]["vllm:request_success_total"] > 0


def scripted_metrics(texts: list[str]) -> type[BaseHTTPRequestHandler]:
    """A /metrics endpoint that answers `texts`, one per scrape, then the last one again."""

    class Scripted(MetricsText):
        served = 0

        def text(self) -> str:
            text = texts[min(Scripted.served, len(texts) - 1)]
            Scripted.served += 1
            return text

    return Scripted


def scrape_rows(texts: list[str], csv_path: Path) -> Scraper:
    """Scrape an endpoint answering `texts` (0.1 s apart) until it has answered each once."""
    start = time.monotonic()
    with serving(scripted_metrics(texts)) as api_base:
        url = api_base.removesuffix("/v1") + "/metrics"
        scraper = Scraper(url, 0.1, csv_path, lambda: time.monotonic() - start)
        scraper.start()
        wait_until(lambda: scraper.rows + scraper.failures >= len(texts))
        scraper.stop()
    return scraper


COUNTER = "# TYPE c_total counter\n"


@pytest.mark.parametrize(
    ("texts", "increases"),
    [
        (  # the server restarted its counter between two scrapes: -95.0 was written
            [
                COUNTER + "c_total 100\n",
                COUNTER + "c_total 300\n",
                COUNTER + "c_total 20\n",
                COUNTER + "c_total 50\n",
            ],
            [200, 20, 30],
        ),
        (  # a label set left the sum (b), then came back from 0: its absence is no decrease
            [
                COUNTER + 'c_total{x="a"} 50\nc_total{x="b"} 50\n',
                COUNTER + 'c_total{x="a"} 60\n',
                COUNTER + 'c_total{x="a"} 70\nc_total{x="b"} 5\n',
            ],
            [10, 15],
        ),
        (  # a label set missing from one scrape only: its whole cumulative value (40) was counted
            [
                COUNTER + 'c_total{e="0"} 100\nc_total{e="1"} 40\n',
                COUNTER + 'c_total{e="0"} 101\n',
                COUNTER + 'c_total{e="0"} 102\nc_total{e="1"} 41\n',
            ],
            [1, 2],
        ),
    ],
    ids=["counter-reset", "label-set-gone", "label-set-missing-once"],
)
def test_a_counter_that_goes_down_was_reset_and_its_rate_is_never_negative(
    tmp_path: Path, texts: list[str], increases: list[float]
) -> None:
    """Prometheus rate() semantics, per label set: a decrease is a reset (the counter began again at
    0, so its new value is the increase), a label set first seen counts from 0, one gone adds nothing."""
    csv_path = tmp_path / "server_metrics.csv"
    scraper = scrape_rows(texts, csv_path)
    assert scraper.failures == 0
    header, rows, _ = read_appended_csv(csv_path)
    assert header == ["elapsed_s", "c_total"] and "c_total" not in rows[0]
    for before, row, increase in zip(rows, rows[1:], increases, strict=False):
        dt = row["elapsed_s"] - before["elapsed_s"]
        assert row["c_total"] * dt == pytest.approx(increase, rel=0.05)


def test_a_nan_sample_is_an_empty_cell_never_nan(tmp_path: Path) -> None:
    """prometheus_client reads `NaN` as float('nan'): the average of a gauge holding it, the rate of a
    counter, were written as `nan`, which the file's readers take for no number at all."""
    gauge = "# TYPE g gauge\n"
    texts = [
        gauge + "g NaN\n" + COUNTER + "c_total 10\n",
        gauge + "g NaN\n" + COUNTER + "c_total NaN\n",
        gauge + "g NaN\n" + COUNTER + "c_total 30\n",
    ]
    csv_path = tmp_path / "server_metrics.csv"
    scraper = scrape_rows(texts, csv_path)
    assert scraper.failures == 0 and scraper.rows >= 3
    assert "nan" not in csv_path.read_text().lower()
    _, rows, _ = read_appended_csv(csv_path)
    dt = rows[2]["elapsed_s"] - rows[1]["elapsed_s"]
    assert rows[2]["c_total"] * dt == pytest.approx(20, rel=0.05)  # 10 -> 30, the NaN skipped


def test_series_names_that_need_quoting_are_left_out(tmp_path: Path) -> None:
    """prometheus_client reads quoted UTF-8 names (`{"a,b"} 1`): a comma in one added a header cell, and
    the uploader refused the run. Such names (a comma, a quote, a line break) are left out: every
    reader of the file splits plain lines at commas."""
    text = '# TYPE vllm:x gauge\nvllm:x 1\n{"a,b"} 2\n{"q\\"uote"} 3\n{"line\\nbreak"} 4\n'
    csv_path = tmp_path / "server_metrics.csv"
    scraper = scrape_rows([text, text], csv_path)
    assert scraper.failures == 0
    header, rows, cut_off = read_appended_csv(csv_path)  # the uploader's own reader
    assert header == ["elapsed_s", "vllm:x"] and cut_off is None
    assert [r["vllm:x"] for r in rows] == [1] * len(rows)
    assert read_appended_frame(csv_path).columns == header  # the evaluation's reader


def test_text_the_parser_chokes_on_is_a_failed_scrape_not_a_dead_scraper(tmp_path: Path) -> None:
    """The parser raises IndexError on some malformed lines: it ended the scrape thread silently, and
    the end of the run blamed a lack of CPU for the missing rows."""
    start = time.monotonic()
    with serving(scripted_metrics(["{,\t=TYPE'\n"])) as api_base:
        url = api_base.removesuffix("/v1") + "/metrics"
        scraper = Scraper(url, 0.1, tmp_path / "m.csv", lambda: time.monotonic() - start)
        scraper.start()
        wait_until(lambda: scraper.failures >= 3, timeout_s=5)
        alive = scraper._thread.is_alive()
        scraper.stop()
        problem = probe(url)  # the same text before the run: a reason not to scrape, no traceback
    assert (scraper.failures >= 3, alive) == (True, True)
    assert problem is not None and problem.startswith("ValueError: unreadable Prometheus text")


def test_a_scrape_that_fails_is_counted_and_the_scraper_goes_on(tmp_path: Path) -> None:
    csv_path = tmp_path / "server_metrics.csv"
    scraper = Scraper("http://127.0.0.1:9/metrics", 0.1, csv_path, lambda: 1.0)
    scraper.start()
    wait_until(lambda: scraper.failures >= 2)
    scraper.stop()
    assert scraper.failures >= 2 and scraper.rows == 0 and not csv_path.exists()


def test_a_scraper_that_got_no_cpu_says_so(tmp_path: Path) -> None:
    # As when every core is busy: a 5 s run, scrapes 0.2 s apart, and the thread never ran.
    starved = Scraper("http://127.0.0.1:9/metrics", 0.2, tmp_path / "m.csv", lambda: 5.0)
    assert starved.shortfall() == (
        "0 of about 25 scrapes were taken: the scraper runs at idle priority, so as not to delay the "
        "drivers, and got little CPU (were the machine's cores busy with other work?)"
    )
    starved.rows = 13  # half or more: nothing to say
    assert starved.shortfall() is None
    assert Scraper("http://127.0.0.1:9/metrics", 1.0, tmp_path / "m.csv", lambda: 2.0).shortfall() is None


def test_an_endpoint_slower_than_the_interval_is_not_taken_for_a_lack_of_cpu(tmp_path: Path) -> None:
    # It accepts connections and never answers: every scrape waits for its timeout (2 s here).
    with socket.create_server(("127.0.0.1", 0)) as silent:
        start = time.monotonic()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/metrics"
        scraper = Scraper(url, 0.2, tmp_path / "m.csv", lambda: time.monotonic() - start)
        scraper.start()
        wait_until(lambda: scraper.failures >= 2, timeout_s=30)
        scraper.stop()
    assert scraper.rows == 0 and scraper.shortfall() is None  # the failures line says it all


SIMULATED_8S = ["--server.type", "simulated", "--runtime.benchmark_timeout", "8"]


def test_a_run_against_the_simulated_server_scrapes_it(tmp_path: Path) -> None:
    proc = run_cli(
        # The scraper runs at idle priority (SCHED_IDLE): on a machine whose cores are all busy, as
        # under the full test suite, it gets a fraction of a percent of a core. A 3 s run with a
        # scrape a second once left one row, and once (0.2 s apart) none: 8 s, 0.2 s apart.
        [*SIMULATED_8S, "--server_metrics.interval_seconds", "0.2", "--output_dir", "out"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "veeksha: server metrics: scraping http://127.0.0.1:" in proc.stdout
    paths = only_run_dir(tmp_path / "out")
    with paths.server_metrics_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 2 and float(rows[-1]["elapsed_s"]) > float(rows[0]["elapsed_s"])
    assert max(float(r["vllm:num_requests_running"]) for r in rows) > 0

    # The uploader logs them beside the client's time series: `server/<series>` on `server_elapsed_s`.
    up = upload(["--mode", "offline", str(paths.root)], make_home(tmp_path / "home"), cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    (sync_dir,) = offline_run_dirs(paths.root)
    run = read_offline_run(sync_dir)
    logged = [r for r in run.history if "server_elapsed_s" in r]
    assert [r["server_elapsed_s"] for r in logged] == [float(r["elapsed_s"]) for r in rows]
    running = [r["server/vllm:num_requests_running"] for r in logged]
    assert running == [float(r["vllm:num_requests_running"]) for r in rows]
    metrics = {m.glob_name or m.name: m for m in run.metrics}
    assert metrics["server/*"].step_metric == "server_elapsed_s"


def test_server_metrics_can_be_turned_off(tmp_path: Path) -> None:
    flags = ["--server.type", "simulated", "--runtime.max_sessions", "2", "--server_metrics.enabled", "false"]
    proc = run_cli([*flags, "--output_dir", "out"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not only_run_dir(tmp_path / "out").server_metrics_csv.exists()
    assert "server metrics" not in proc.stdout


def test_a_row_that_cannot_be_written_is_counted_too(tmp_path: Path) -> None:
    with sim_server(**FAST) as handle:
        scraper = Scraper(
            f"{root(handle)}/metrics", 0.1, tmp_path / "gone" / "server_metrics.csv", lambda: 1.0
        )
        scraper.start()
        wait_until(lambda: scraper.failures >= 2)
        scraper.stop()
    assert scraper.failures >= 2 and scraper.rows == 0


def test_a_token_in_the_metrics_url_reaches_no_message() -> None:
    with sim_server(**FAST) as handle:
        problem = probe(f"{root(handle)}/nope?token=probe-secret-21")  # a 404 names its URL
    assert problem is not None and "404" in problem and "probe-secret-21" not in problem


def test_tokens_in_urls_reach_no_file_and_no_console_line(tmp_path: Path) -> None:
    token, key, password = "metrics-token-22", "gateway-key-23", "metrics-password-25"
    proc = run_cli(
        [
            "--server.type",
            "simulated",
            "--runtime.max_sessions",
            "2",
            "--server_metrics.url",
            f"http://scraper:{password}@127.0.0.1:1/metrics?token={token}",
            "--client.api_base",
            f"http://unused.invalid/v1?key={key}",  # in run.json's argv (the server's URL is used)
            "--output_dir",
            "out",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    text = all_text_under(tmp_path / "out") + proc.stdout + proc.stderr
    assert token not in text and key not in text and password not in text
    assert "not scraped (http://<redacted>@127.0.0.1:1/metrics" in proc.stdout  # the whole user-info
    paths = only_run_dir(tmp_path / "out")
    assert (
        "?token=<redacted>" in paths.config_yml.read_text()
        and "?key=<redacted>" in paths.run_json.read_text()
    )


# A server whose /metrics answers a line that is no Prometheus text, holding its own --api-key and
# a secret it inherited: the parser's error quotes the line.
BAD_METRICS_SERVER = textwrap.dedent(
    """
    import os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    port, key = int(sys.argv[1]), sys.argv[sys.argv.index("--api-key") + 1]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            line = f'up{{api_key="{key}",hf="{os.environ["HF_TOKEN"]}"'
            body = (line if self.path == "/metrics" else "ok").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def test_a_probe_of_metrics_that_echo_the_runs_secrets_shows_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_key, inherited = "ADAD2222serverkey", "hf_inherited_metrics_26"
    monkeypatch.setenv("HF_TOKEN", inherited)
    (tmp_path / "bad_metrics.py").write_text(BAD_METRICS_SERVER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, str(tmp_path / "bad_metrics.py"), str(port), "--api-key", server_key]
    cfg = build_benchmark_config(
        {"server": {"type": "command", "command": command, "ready_url": f"http://127.0.0.1:{port}/health"}}
    )
    assert cfg.server is not None

    with start_server(cfg.server):
        problem = probe(f"http://127.0.0.1:{port}/metrics", run_secret_values(cfg))

    assert problem is not None and problem.startswith("ValueError")
    assert server_key not in problem and inherited not in problem


class GrowingCounter(MetricsText):
    """A counter that grows 100 per second since `started`."""

    started = 0.0

    def text(self) -> str:
        value = 100 * (time.monotonic() - GrowingCounter.started)
        return f"# TYPE vllm:prefix_cache_hits_total counter\nvllm:prefix_cache_hits_total {value}\n"


def test_a_run_shorter_than_the_interval_is_scraped_at_its_start_and_its_stop(tmp_path: Path) -> None:
    """The first scrape came one interval into the run (a baseline only: a rate needs two) and none at
    the stop: a run shorter than two intervals had no counter rate at all (no server prefix-cache hit
    fraction, so its `prefix_cache` check was skipped), and every run lost its first and last
    interval. Now a scrape as the run starts and one as it stops."""
    csv_path = tmp_path / "server_metrics.csv"
    with serving(GrowingCounter) as url:
        GrowingCounter.started = start = time.monotonic()
        scraper = Scraper(f"{url}/metrics", 5.0, csv_path, lambda: time.monotonic() - start)
        scraper.start()
        time.sleep(0.6)
        scraper.stop()
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["vllm:prefix_cache_hits_total"] == "" for r in rows] == [True, False]
    assert float(rows[0]["elapsed_s"]) < 0.3 and float(rows[1]["elapsed_s"]) >= 0.6
    assert 80 < float(rows[1]["vllm:prefix_cache_hits_total"]) < 120  # per second, over the run


def test_nothing_is_written_before_the_start_nor_scraped_at_a_stop_just_after_one(tmp_path: Path) -> None:
    csv_path = tmp_path / "server_metrics.csv"
    with serving(GrowingCounter) as url:
        never_started = Scraper(f"{url}/metrics", 5.0, csv_path, lambda: None)
        never_started.start()
        time.sleep(0.2)
        never_started.stop()
        assert never_started.rows == 0 and not csv_path.exists()
        start = time.monotonic()
        at_once = Scraper(f"{url}/metrics", 5.0, csv_path, lambda: time.monotonic() - start)
        at_once.start()
        wait_until(lambda: at_once.rows >= 1)
        at_once.stop()  # a rate over a few milliseconds would be noise
    assert at_once.rows == 1


class LookedUpTokens(MetricsText):
    """Prefix-cache counters that stand still until the test sets them: the run's lookups."""

    queries = 0

    def text(self) -> str:
        return (
            f"# TYPE {VLLM_CACHE_QUERIES} counter\n{VLLM_CACHE_QUERIES} {LookedUpTokens.queries}\n"
            f"# TYPE {VLLM_CACHE_HITS} counter\n{VLLM_CACHE_HITS} 0\n"
        )


def test_the_baseline_is_taken_as_the_drivers_are_told_to_start_so_only_the_runs_requests_count(
    tmp_path: Path,
) -> None:
    """The first scrape was the idle-priority thread's, some time after the start: on a loaded CI a
    0.6 s run's three requests all came before it, the server's lookups counted nowhere (0 queries),
    and the run's prefix_cache check was skipped. Now the recorder asks for it once every driver is
    ready (take_baseline) and waits for it: what the counters did before (another client, a previous
    run's tail) is not the run's, and the requests sent at once after the start are."""
    csv_path = tmp_path / "server_metrics.csv"
    run_started: list[float] = []
    LookedUpTokens.queries = 0
    with serving(LookedUpTokens) as url:
        elapsed = lambda: time.monotonic() - run_started[0] if run_started else None  # noqa: E731
        scraper = Scraper(f"{url}/metrics", 5.0, csv_path, elapsed)
        scraper.start()
        time.sleep(0.1)  # the drivers start
        LookedUpTokens.queries = 50  # meanwhile, someone else's lookups
        scraper.take_baseline()
        run_started.append(time.monotonic())
        LookedUpTokens.queries = 350  # the run's first requests, before the scraper's thread runs
        time.sleep(0.3)
        scraper.stop()
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and float(rows[0]["elapsed_s"]) <= 0 < float(rows[1]["elapsed_s"])
    tokens = server_cache_tokens(csv_path)
    assert tokens is not None and tokens.queries == pytest.approx(300, rel=0.01)  # elapsed_s: to the ms


class NeverAnswers(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(3)

    def log_message(self, *args: object) -> None:
        pass


def test_a_metrics_endpoint_that_does_not_answer_holds_the_start_for_at_most_the_baseline_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_metrics, "BASELINE_WAIT_S", 0.3)
    with serving(NeverAnswers) as url:
        scraper = Scraper(f"{url}/metrics", 5.0, tmp_path / "m.csv", lambda: None)
        scraper.start()
        began = time.monotonic()
        scraper.take_baseline()
        waited = time.monotonic() - began
        scraper.stop()
    assert 0.25 < waited < 1.0


def test_a_malformed_metrics_url_is_a_failed_scrape_not_a_crash(tmp_path: Path) -> None:
    """httpx's InvalidURL is no HTTPError: it escaped the scraper (and the probe) and ended the run."""
    assert probe("http://[::1/metrics") is not None
    start = time.monotonic()
    scraper = Scraper("http://[::1/metrics", 5.0, tmp_path / "m.csv", lambda: time.monotonic() - start)
    scraper.start()
    scraper.take_baseline()
    scraper.stop()
    assert scraper.failures >= 1 and scraper.rows == 0
