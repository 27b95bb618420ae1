"""The `prefix_cache` health check: a server that already held a run's prompts (an earlier run with the
same seed against a server still up) answers them from its cache, and the run's TTFC is no measurement.

The end-to-end test runs `veeksha-run` three times against one simulated server started as its own
process, its prefix cache on and its vLLM counters scraped into server_metrics.csv: once, again with the
same seed (every prompt is cached), and with another seed.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from veeksha.runner.evaluation import health
from veeksha.shared.config import HealthThresholds
from veeksha.shared.paths import RunPaths
from veeksha.shared.records import VLLM_CACHE_HITS, VLLM_CACHE_QUERIES

from tests.runner.helpers import run_cli
from tests.runner.simserver.test_standalone import simulate_server

LIMIT = HealthThresholds().max_unexpected_cache_hit_fraction

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
    detail = second_check["detail"]
    assert "of prompt tokens in its cache where the config shares 0%" in detail
    assert "an earlier run with the same seed against this server?" in detail
    assert "set another `seed`, or restart the server / reset its prefix cache" in detail
    assert "prefix_cache" in console  # the console names the failed check

    assert other_check["result"] == "PASSED", other_check  # new prompts: nothing cached

    # `veeksha-run evaluate` rebuilds the same verdict from the directory.
    before = {p: p.read_bytes() for p in (second.health_checks_json, second.health_check_txt)}
    proc = run_cli(["evaluate", str(second.root)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {p: p.read_bytes() for p in before} == before
