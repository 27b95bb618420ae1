"""Synthetic prompts share only what the config asks for, measured by the server's prefix cache.

A benchmark whose prompts hit a prefix cache by accident reports a TTFT far better than production
sees. Here `veeksha-run` drives a simulated server started by the test, over real loopback HTTP, and
the server's own counters (GET /sim/stats) say how many prompt tokens it found cached.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson

from tests.runner.helpers import run_cli
from tests.runner.simserver.test_server import FAST, root, sim_server


def cached_fractions(tmp_path: Path, *flags: str) -> tuple[float, float]:
    """(the server's hit fraction, the run's expected_prefix_cache_hit_fraction)"""
    with sim_server(**FAST) as handle:
        proc = run_cli(
            [
                "--client.api_base",
                handle.api_base,
                "--client.model",
                "veeksha-sim",
                "--traffic_scheduler.interval_generator.arrival_rate",
                "50",
                "--runtime.max_sessions",
                "40",
                "--output_dir",
                "out",
                *flags,
            ],
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        stats = httpx.get(f"{root(handle)}/sim/stats", timeout=10, trust_env=False).json()
    (run,) = (tmp_path / "out").iterdir()
    expected = orjson.loads((run / "metrics" / "summary_stats.json").read_bytes())
    observed = stats["prefix_cache_hits"] / stats["prefix_cache_queries"]
    return observed, expected["expected_prefix_cache_hit_fraction"]


def test_unique_prompts_find_nothing_in_the_servers_prefix_cache(tmp_path: Path) -> None:
    observed, expected = cached_fractions(tmp_path)
    assert observed < 0.01 and expected == 0.0


def test_a_shared_prefix_is_cached_as_configured(tmp_path: Path) -> None:
    channel = "[{type: text, shared_prefix_ratio: 0.5, shared_prefix_probability: 1}]"
    observed, expected = cached_fractions(tmp_path, "--session_generator.channels", channel)
    # Half of every prompt, as configured, less what no earlier prompt sent: the first prompt's
    # prefix, and the part of a prefix longer than any before it (it used to claim 0.5 exactly).
    assert 0.45 <= expected < 0.5
    # The server finds a little less: the prefix's partial last block.
    assert expected - 0.12 <= observed <= expected


def test_multi_turn_history_is_shared_within_a_session_on_purpose(tmp_path: Path) -> None:
    graph = "{type: linear, inherit_history: true}"
    observed, expected = cached_fractions(tmp_path, "--session_generator.session_graph", graph)
    assert expected > 0.3 and expected - 0.12 <= observed <= expected
