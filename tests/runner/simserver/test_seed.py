"""The simulated server's randomness (error_rate, eos, reasoning lengths) derives from the run's root
`seed` like every other random stream (config.md), unless `server.seed` is given."""

from __future__ import annotations

import dataclasses

import httpx
from veeksha.runner.server_launcher import start_server
from veeksha.shared.config import SimulatedServerConfig, run_server
from veeksha.shared.config_loader import build_benchmark_config

from tests.runner.simserver.test_server import FAST, chat_body


def simulated(tree: dict) -> SimulatedServerConfig:
    server = {"type": "simulated", "error_rate": 0.5, **FAST, **tree.pop("server", {})}
    started = run_server(build_benchmark_config({**tree, "server": server}))
    assert isinstance(started, SimulatedServerConfig)
    return started


def error_draws(server: SimulatedServerConfig, n: int = 40) -> list[bool]:
    """Which of n requests in a row the server failed (error_rate 0.5)."""
    with start_server(server) as handle, httpx.Client(base_url=handle.api_base, trust_env=False) as client:
        return [
            client.post("/chat/completions", json=chat_body(max_tokens=1)).status_code == 500
            for _ in range(n)
        ]


def test_the_root_seed_chooses_the_servers_draws() -> None:
    # server.seed defaulted to 0: request k failed or not whatever the run's seed.
    first, again, other = (error_draws(simulated({"seed": s})) for s in (1, 1, 2))
    assert first == again
    assert first != other  # (the same 40 draws by chance: one in 2^40)


def test_a_given_server_seed_wins_over_the_root_seed() -> None:
    first, other = (error_draws(simulated({"seed": s, "server": {"seed": 5}})) for s in (1, 2))
    assert first == other


def test_the_server_seed_follows_a_changed_root_seed_unless_given() -> None:
    # A capacity search runs attempt i with seed + i (dataclasses.replace): its server follows.
    derived = build_benchmark_config({"seed": 7, "server": {"type": "simulated"}})
    given = build_benchmark_config({"seed": 7, "server": {"type": "simulated", "seed": 3}})
    moved, kept = (dataclasses.replace(cfg, seed=8) for cfg in (derived, given))
    seeds = [run_server(cfg).seed for cfg in (derived, moved, given, kept)]  # type: ignore[union-attr]
    assert seeds == [7, 8, 3, 3]
    # config.yml keeps it as given
    assert derived.server.seed is None  # type: ignore[union-attr]
