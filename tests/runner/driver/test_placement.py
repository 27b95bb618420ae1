"""Placement: N drivers split one seeded session stream. Whatever N is, the same seed gives the same
sessions (same ids, same prompts, same shapes) at the same arrival offsets, each on driver id % N."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from veeksha.runner.driver.placement import PlacedSessions
from veeksha.runner.driver.traffic import interval_sampler
from veeksha.runner.sessions.factory import make_session_generator
from veeksha.runner.sessions.model import Session
from veeksha.runner.sessions.randomness import stream
from veeksha.shared.config import PoissonIntervals
from veeksha.shared.config_loader import build_benchmark_config

from tests.runner.sessions.test_traces import REQUESTS, write_jsonl

SYNTHETIC: dict[str, Any] = {
    "type": "synthetic",
    "session_graph": {
        "type": "linear",
        "inherit_history": True,
        "num_request_generator": {"type": "uniform", "min": 1, "max": 4},
    },
    "channels": [
        {
            "type": "text",
            "body_length_generator": {"type": "uniform", "min": 20, "max": 200},
            "shared_prefix_ratio": 0.5,
            "shared_prefix_probability": 0.5,
        }
    ],
}


def placed(
    session_generator: dict[str, Any], n: int, *, seed: int = 7, limit: int | None = None, rate: bool = True
) -> list[list[Session]]:
    """Every driver's sessions, in the order each driver gets them."""
    cfg = build_benchmark_config({"seed": seed, "session_generator": session_generator})
    per_driver = []
    for driver_id in range(n):
        gaps = (
            interval_sampler(PoissonIntervals(arrival_rate=20.0), stream(seed, "arrivals")) if rate else None
        )
        sessions = PlacedSessions(make_session_generator(cfg), driver_id, n, gaps, limit)
        mine = []
        while (session := sessions.next_session()) is not None and len(mine) < 200:
            mine.append(session)
        per_driver.append(mine)
    return per_driver


def described(session: Session) -> tuple[Any, ...]:
    nodes = tuple(
        (n.node_id, n.parents, n.history_parent, n.wait_after_ready, n.content, n.requested_output_tokens)
        for n in session.nodes
    )
    return session.session_id, session.arrival_offset, nodes


def merged(per_driver: list[list[Session]]) -> list[tuple[Any, ...]]:
    return sorted((described(s) for sessions in per_driver for s in sessions), key=lambda d: d[0])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_the_same_seed_gives_the_same_sessions_at_the_same_offsets_whatever_the_number_of_drivers(n: int):
    one = merged(placed(SYNTHETIC, 1, limit=60))
    assert len(one) == 60 and all(nodes for _, _, nodes in one)
    assert merged(placed(SYNTHETIC, n, limit=60)) == one


@pytest.mark.parametrize("n", [2, 3])
def test_session_i_runs_on_driver_i_mod_n_in_stream_order(n: int):
    per_driver = placed(SYNTHETIC, n, limit=30)
    for driver_id, sessions in enumerate(per_driver):
        ids = [s.session_id for s in sessions]
        assert ids == list(range(driver_id, 30, n))
        offsets = [s.arrival_offset for s in sessions]
        assert offsets == sorted(offsets) and offsets[0] > 0


def test_a_different_seed_gives_different_sessions():
    assert merged(placed(SYNTHETIC, 2, limit=10)) != merged(placed(SYNTHETIC, 2, limit=10, seed=8))


def test_concurrent_traffic_places_sessions_without_offsets():
    per_driver = placed(SYNTHETIC, 2, limit=10, rate=False)
    assert [s.session_id for s in per_driver[1]] == [1, 3, 5, 7, 9]
    assert all(s.arrival_offset is None for sessions in per_driver for s in sessions)


def test_a_finite_trace_is_split_and_its_timestamps_kept(tmp_path: Path):
    trace = {"type": "trace", "path": str(write_jsonl(tmp_path / "t.jsonl", REQUESTS)), "wrap": False}
    timed = {**trace, "timed_replay": True}
    for n in (1, 2, 3):
        assert merged(placed(timed, n)) == merged(placed(timed, 1))
        assert merged(placed(trace, n)) == merged(placed(trace, 1))
    (first, second) = placed(timed, 2)
    assert [s.arrival_offset for s in first] == [0.0, 3.0] and [s.arrival_offset for s in second] == [1.5]


def test_a_placeholder_draws_what_the_full_session_draws():
    """Drawing session k as a placeholder leaves session k + 1 exactly as drawing it in full does."""
    cfg = build_benchmark_config({"seed": 3, "session_generator": SYNTHETIC})
    full, skipping = make_session_generator(cfg), make_session_generator(cfg)
    for k in range(40):
        a = full.next_session()
        b = skipping.next_session(build=random.Random(k).random() < 0.5)
        assert a is not None and b is not None and a.session_id == b.session_id == k
        if b.nodes:
            assert described(a) == described(b)
        else:
            assert a.nodes  # a placeholder has no nodes; the session itself has some
