"""The session generator is chosen by a plain table keyed like the config's own table."""

from __future__ import annotations

from veeksha.runner.sessions.factory import GENERATORS, make_session_generator
from veeksha.runner.sessions.synthetic import SyntheticSessionGenerator
from veeksha.shared.config import SESSION_GENERATORS
from veeksha.shared.config_loader import build_benchmark_config


def test_every_session_generator_type_the_config_accepts_has_a_generator() -> None:
    assert GENERATORS.keys() == SESSION_GENERATORS.keys()


def test_the_default_config_makes_synthetic_sessions() -> None:
    generator = make_session_generator(build_benchmark_config({"seed": 1}))
    assert isinstance(generator, SyntheticSessionGenerator)
    assert generator.next_session() is not None
