"""The session generator a config asks for: one table from config section type to generator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from veeksha.runner.sessions.model import SessionGenerator
from veeksha.runner.sessions.synthetic import SyntheticSessionGenerator, most_requests_in_flight
from veeksha.runner.sessions.tokenizer import LocalTokenizer, load_tokenizer
from veeksha.runner.sessions.traces import TraceSessionGenerator
from veeksha.shared.config import BenchmarkConfig, SyntheticSessions

# session_generator.type -> generator, keyed like the config's table (shared.config.SESSION_GENERATORS).
GENERATORS: dict[str, Callable[[Any, int, LocalTokenizer | None], SessionGenerator]] = {
    "synthetic": SyntheticSessionGenerator,
    "trace": TraceSessionGenerator,
}


def requests_in_flight_per_session(cfg: BenchmarkConfig) -> int:
    """The most requests one session of `cfg` can have in flight at once (trace sessions: one turn
    at a time)."""
    sg = cfg.session_generator
    return most_requests_in_flight(sg.session_graph) if isinstance(sg, SyntheticSessions) else 1


def make_session_generator(cfg: BenchmarkConfig) -> SessionGenerator:
    """The generator `cfg.session_generator` describes, seeded by `cfg.seed`."""
    tokenizer = load_tokenizer(cfg.client.tokenizer) if cfg.client.tokenizer else None
    sg = cfg.session_generator
    return GENERATORS[sg.type](sg, cfg.seed, tokenizer)
