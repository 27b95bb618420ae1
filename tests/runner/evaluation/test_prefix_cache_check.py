"""The `prefix_cache` health check: a server that already held a run's prompts (an earlier run with the
same seed against a server still up) answers them from its cache, and the run's TTFC is no measurement.

The end-to-end tests run `veeksha-run` against simulated servers started as their own processes, their
prefix cache on and their vLLM counters scraped into server_metrics.csv: once, again with the same seed
(every prompt is cached), and with another seed; a trace replayed several times in one run (its repeats
are the server's to cache); and a run beside another client's traffic (the server's counters are not
the run's).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import polars as pl
import pytest
from veeksha.runner.evaluation import health
from veeksha.runner.evaluation.summary import sent_prompt_tokens
from veeksha.shared.config import BenchmarkConfig, HealthThresholds, SyntheticSessions, TraceSessions
from veeksha.shared.paths import RunPaths
from veeksha.shared.records import VLLM_CACHE_HITS, VLLM_CACHE_QUERIES

from tests.runner.helpers import run_cli
from tests.runner.simserver.test_standalone import simulate_server

LIMIT = HealthThresholds().max_unexpected_cache_hit_fraction
TRACE_DETAIL = "prompts come from a trace file: repeats of its text are the server's to cache"

# ------------------------------------------------------------------ the check on its own


@pytest.mark.parametrize(
    ("server", "expected", "why"),
    [
        (None, 0.0, "no prefix-cache counters"),
        (0.3, None, "no prompt token"),
    ],
    ids=["no-server-counters", "no-prompt-sent"],
)
def test_it_is_skipped_without_both_fractions(server: float | None, expected: float | None, why: str) -> None:
    check = health.prefix_cache(server, expected, HealthThresholds())
    assert check.name == "prefix_cache" and check.result == "SKIPPED"
    assert why in check.detail


def test_a_difference_at_the_threshold_passes_and_above_it_fails() -> None:
    at = health.prefix_cache(0.75, 0.25, HealthThresholds())  # exactly 0.5 (binary fractions)
    assert at.result == "PASSED" and at.detail == ""
    assert at.metrics == {
        "server_prefix_cache_hit_fraction": 0.75,
        "expected_prefix_cache_hit_fraction": 0.25,
        "unexpected_hit_fraction": 0.5,
    }
    assert at.thresholds == {"max_unexpected_cache_hit_fraction": LIMIT}
    above = health.prefix_cache(0.75, 0.25, HealthThresholds(max_unexpected_cache_hit_fraction=0.25 - 2**-10))
    assert above.result == "FAILED" and "\n" not in above.detail
    assert "75% of prompt tokens in its cache where the config shares 25%" in above.detail


def test_hits_below_the_expected_sharing_pass() -> None:
    # A cache too small or off finds less than the config shares: no sign of a repeat.
    check = health.prefix_cache(0.0, 0.5, HealthThresholds())
    assert check.result == "PASSED" and check.metrics["unexpected_hit_fraction"] == -0.5


SENT = 1000  # prompt tokens the run sent
AT_LIMIT = SENT * health.MAX_QUERIED_PER_SENT_TOKEN  # 1500.0, exact in binary


@pytest.mark.parametrize(
    ("queried", "result"),
    [(AT_LIMIT, "FAILED"), (AT_LIMIT + 2**-4, "SKIPPED"), (SENT * 0.5, "FAILED")],
    ids=["at-the-limit-judged", "above-it-skipped", "fewer-than-sent-judged"],
)
def test_a_server_that_looked_up_far_more_prompt_tokens_than_the_run_sent_is_not_judged(
    queried: float, result: str
) -> None:
    # Its counters cover other clients too: their hits are not this run's (fewer than sent: requests
    # that failed before the server, not a sign of other traffic).
    check = health.prefix_cache(0.9, 0.0, HealthThresholds(), queried=queried, sent=SENT)
    assert check.result == result, check
    assert check.metrics == {
        "server_prefix_cache_hit_fraction": 0.9,
        "expected_prefix_cache_hit_fraction": 0.0,
        "unexpected_hit_fraction": 0.9,
        "server_prefix_cache_queried_tokens": queried,
        "sent_prompt_tokens": SENT,
    }
    if result == "SKIPPED":
        assert check.detail == (
            "the server served other traffic too (it looked up 1,500 prompt tokens, this run sent 1,000): "
            "its hit fraction is not this run's"
        )


def test_without_the_token_counts_the_fractions_alone_are_judged() -> None:
    check = health.prefix_cache(0.9, 0.0, HealthThresholds(), queried=None, sent=SENT)
    assert check.result == "FAILED" and "sent_prompt_tokens" in check.metrics
    assert "server_prefix_cache_queried_tokens" not in check.metrics


@pytest.mark.parametrize(
    ("flavor", "hint"),
    [("conversation", False), ("auto", True)],
)
def test_prompts_from_a_trace_are_not_judged(flavor: str, hint: bool) -> None:
    check = health.prefix_cache(1.0, 0.0, HealthThresholds(), trace_flavor=flavor)
    assert check.result == "SKIPPED" and check.metrics["server_prefix_cache_hit_fraction"] == 1.0
    assert check.detail.startswith(TRACE_DETAIL)
    assert ("flavor: request_log" in check.detail) == hint  # auto: evaluation cannot tell a request log


def test_which_sessions_take_their_text_from_a_trace() -> None:
    def flavor_of(sessions: SyntheticSessions | TraceSessions) -> str | None:
        return health.trace_text_flavor(BenchmarkConfig(session_generator=sessions))

    assert flavor_of(SyntheticSessions()) is None
    # A request log's prompt words are drawn from the seed, session by session: judged as synthetic ones.
    assert flavor_of(TraceSessions(path="t.jsonl", flavor="request_log")) is None
    assert flavor_of(TraceSessions(path="t.jsonl", flavor="conversation")) == "conversation"
    assert flavor_of(TraceSessions(path="t.jsonl")) == "auto"


def test_the_prompt_tokens_sent_count_warmup_and_not_the_requests_never_sent() -> None:
    rows = pl.DataFrame(
        {
            "is_warmup": [True, False, False, False],
            "scheduler_dispatched_at": [0.1, 0.2, 0.3, None],
            "num_total_prompt_tokens": [40, 100, 7, None],
        }
    )
    assert sent_prompt_tokens(rows) == 147
    assert sent_prompt_tokens(rows.head(0)) == 0


# ------------------------------------------------------------------ end to end

CONFIG = """
seed: 42
output_dir: out
client: {{api_base: '{url}', model: sim}}
traffic_scheduler: {{type: rate, interval_generator: {{type: poisson, arrival_rate: 10}}}}
# Rates need two scrapes: a short run needs them often.
server_metrics: {{interval_seconds: 0.1}}
runtime: {{max_sessions: 10}}
session_generator:
  type: synthetic
  channels: [{{type: text, body_length_generator: {{type: fixed, value: 300}}}}]
  output_spec: {{text: {{output_length_generator: 8}}}}
"""


def _run(tmp_path: Path, name: str, *flags: str) -> tuple[RunPaths, dict, str]:
    """One run into tmp_path/name: its paths, its prefix_cache check and its console output."""
    proc = run_cli(["--config", "c.veeksha.yml", "--output_dir", name, *flags], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / name).iterdir()
    paths = RunPaths(run_dir)
    checks = {c["name"]: c for c in orjson.loads(paths.health_checks_json.read_bytes())["checks"]}
    return paths, checks["prefix_cache"], proc.stdout


def test_a_second_run_with_the_same_seed_against_a_server_still_up_fails(tmp_path: Path) -> None:
    # It passed every check, with TTFC p50 10 ms instead of 210 ms: the server had every prompt cached.
    with simulate_server("--prefix_cache", "true") as url:
        (tmp_path / "c.veeksha.yml").write_text(CONFIG.format(url=url))
        first, first_check, _ = _run(tmp_path, "first")
        second, second_check, console = _run(tmp_path, "second")
        _, other_check, _ = _run(tmp_path, "other", "--seed", "7")

    header = first.server_metrics_csv.read_text().splitlines()[0].split(",")
    assert {VLLM_CACHE_HITS, VLLM_CACHE_QUERIES} <= set(header)  # the server's own counters, scraped

    assert first_check["result"] == "PASSED", first_check
    assert first_check["metrics"]["server_prefix_cache_hit_fraction"] < 0.05

    assert second_check["result"] == "FAILED", second_check
    metrics = second_check["metrics"]
    assert metrics["expected_prefix_cache_hit_fraction"] == 0.0
    assert metrics["server_prefix_cache_hit_fraction"] > 0.9
    assert metrics["unexpected_hit_fraction"] == metrics["server_prefix_cache_hit_fraction"]
    # The run alone: the server looked up about the prompt tokens it sent (role markers aside), far
    # below the 1.5x that means other traffic. All of them: the baseline scrape comes before GO.
    assert metrics["sent_prompt_tokens"] > 0
    assert 1.0 <= metrics["server_prefix_cache_queried_tokens"] / metrics["sent_prompt_tokens"] < 1.1
    detail = second_check["detail"]
    assert "of prompt tokens in its cache where the config shares 0%" in detail
    assert "it had these prompts already: an earlier run of the same sessions (same seed) against" in detail
    assert "Restart the server or reset its prefix cache (or set another `seed`)" in detail
    assert "prefix_cache" in console  # the console names the failed check

    assert other_check["result"] == "PASSED", other_check  # new prompts: nothing cached

    # `veeksha-run evaluate` rebuilds the same verdict from the directory.
    before = {p: p.read_bytes() for p in (second.health_checks_json, second.health_check_txt)}
    proc = run_cli(["evaluate", str(second.root)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {p: p.read_bytes() for p in before} == before


CONVERSATIONS_CONFIG = """
seed: 42
output_dir: out
client: {{api_base: '{url}', model: sim}}
traffic_scheduler: {{type: rate, interval_generator: {{type: poisson, arrival_rate: 10}}}}
server_metrics: {{interval_seconds: 0.1}}
runtime: {{max_sessions: 10}}
session_generator: {{type: trace, path: chats.jsonl}}
"""


def _conversation(i: int) -> dict:
    question = " ".join(f"word{i}x{k}" for k in range(300))
    return {
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": "a b c d e f g h"}]
    }


def test_a_trace_replayed_more_than_once_is_not_judged(tmp_path: Path) -> None:
    # Two recorded conversations, ten sessions: every pass after the first sends the same text again,
    # which the server rightly finds cached (about 80%; the config shares none). Another seed would
    # send the same text: the check has no verdict to give, and FAILED said to change the seed.
    (tmp_path / "chats.jsonl").write_bytes(b"\n".join(orjson.dumps(_conversation(i)) for i in range(2)))
    with simulate_server("--prefix_cache", "true") as url:
        (tmp_path / "c.veeksha.yml").write_text(CONVERSATIONS_CONFIG.format(url=url))
        _, check, _ = _run(tmp_path, "trace")

    assert check["result"] == "SKIPPED", check
    assert check["detail"].startswith(TRACE_DETAIL)
    assert check["metrics"]["server_prefix_cache_hit_fraction"] > 0.6  # what FAILED the run


OTHER_PROMPT = " ".join(f"other{k}" for k in range(2000))


@contextmanager
def another_client(url: str) -> Iterator[None]:
    """Another client of the same server, from before the run starts until after it ends: the same
    2,000-word prompt over and over (all but its first are cache hits), a request every 50 ms or so."""
    stop = threading.Event()
    first = threading.Event()
    errors: list[BaseException] = []

    def send() -> None:
        body = {"model": "other", "messages": [{"role": "user", "content": OTHER_PROMPT}], "max_tokens": 1}
        try:
            with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
                while not stop.is_set():
                    client.post("/chat/completions", json=body).raise_for_status()
                    first.set()
                    stop.wait(0.05)
        except BaseException as e:  # reported by the test, not lost in the thread
            errors.append(e)
            first.set()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        assert first.wait(30), "the other client got no answer"
        yield
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors


def test_a_server_that_served_other_traffic_during_the_run_is_not_judged(tmp_path: Path) -> None:
    # The run's own prompts are new to the server; the other client's hits made it FAIL.
    with simulate_server("--prefix_cache", "true") as url:
        (tmp_path / "c.veeksha.yml").write_text(CONFIG.format(url=url))
        with another_client(url):
            paths, check, _ = _run(tmp_path, "shared")

    assert check["result"] == "SKIPPED", check
    metrics = check["metrics"]
    assert metrics["server_prefix_cache_hit_fraction"] > 0.6  # the other client's hits
    queried, sent = metrics["server_prefix_cache_queried_tokens"], metrics["sent_prompt_tokens"]
    assert queried > health.MAX_QUERIED_PER_SENT_TOKEN * sent
    assert check["detail"] == (
        f"the server served other traffic too (it looked up {queried:,.0f} prompt tokens, "
        f"this run sent {sent:,}): its hit fraction is not this run's"
    )

    before = {p: p.read_bytes() for p in (paths.health_checks_json, paths.health_check_txt)}
    proc = run_cli(["evaluate", str(paths.root)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {p: p.read_bytes() for p in before} == before
