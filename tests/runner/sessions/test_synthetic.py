"""Synthetic sessions: graph structure, prompt lengths, shared prefixes, and determinism."""

from __future__ import annotations

import hashlib
import itertools
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from veeksha.runner.sessions.factory import make_session_generator, requests_in_flight_per_session
from veeksha.runner.sessions.model import Session
from veeksha.runner.sessions.tokenizer import count_tokens_approx, load_tokenizer
from veeksha.shared.config_loader import build_benchmark_config
from veeksha.shared.errors import ConfigError
from veeksha.shared.records import COUNT_APPROXIMATE, COUNT_TOKENIZER

from tests.runner.sessions.test_prompts import train_tokenizer

# The session generator of the seed's complete example.
SEED_EXAMPLE = {
    "type": "synthetic",
    "session_graph": {"type": "linear", "inherit_history": True},
    "channels": [{"type": "text", "body_length_generator": {"type": "uniform", "min": 100, "max": 500}}],
}


def generator(session_generator: dict[str, Any], seed: int = 42, **top: Any):
    return make_session_generator(
        build_benchmark_config({"seed": seed, "session_generator": session_generator, **top})
    )


def take(gen, n: int) -> list[Session]:
    return [gen.next_session() for _ in range(n)]


def graph(spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": "synthetic", "session_graph": spec}


def fixed(value: float) -> dict[str, Any]:
    return {"type": "fixed", "value": value}


def uniform(lo: float, hi: float) -> dict[str, Any]:
    return {"type": "uniform", "min": lo, "max": hi}


def assert_valid_dag(session: Session) -> None:
    """Ids 0..n-1 in topological order, parents exist and come first, history parent is a parent."""
    assert [n.node_id for n in session.nodes] == list(range(len(session.nodes)))
    assert session.nodes[0].parents == ()
    for node in session.nodes:
        assert all(0 <= p < node.node_id for p in node.parents)
        assert len(set(node.parents)) == len(node.parents)
        assert node.history_parent is None or node.history_parent in node.parents
        if not node.parents:
            assert node.wait_after_ready == 0.0  # roots start at the session's arrival


# ---------------------------------------------------------------- graphs


def test_the_default_graph_is_a_single_request() -> None:
    for session in take(generator({"type": "synthetic"}), 20):
        assert len(session.nodes) == 1
        assert_valid_dag(session)
        assert session.nodes[0].history_parent is None
        assert session.arrival_offset is None


def test_sessions_are_numbered_from_zero() -> None:
    assert [s.session_id for s in take(generator({"type": "synthetic"}), 5)] == [0, 1, 2, 3, 4]


def test_a_linear_graph_is_a_chain_continuing_the_conversation() -> None:
    gen = generator(
        graph({"type": "linear", "num_request_generator": fixed(4), "request_wait_generator": fixed(2.5)})
    )
    for session in take(gen, 10):
        assert_valid_dag(session)
        assert [n.parents for n in session.nodes] == [(), (0,), (1,), (2,)]
        assert [n.history_parent for n in session.nodes] == [None, 0, 1, 2]
        assert [n.wait_after_ready for n in session.nodes] == [0.0, 2.5, 2.5, 2.5]


def test_a_linear_graph_without_history_keeps_the_order_but_not_the_context() -> None:
    gen = generator(graph({"type": "linear", "num_request_generator": fixed(3), "inherit_history": False}))
    session = gen.next_session()
    assert [n.parents for n in session.nodes] == [(), (0,), (1,)]
    assert [n.history_parent for n in session.nodes] == [None, None, None]


def test_linear_lengths_and_waits_follow_their_generators() -> None:
    gen = generator(
        graph(
            {
                "type": "linear",
                "num_request_generator": uniform(1, 5),
                "request_wait_generator": uniform(0.5, 1.5),
            }
        )
    )
    sessions = take(gen, 400)
    sizes = Counter(len(s.nodes) for s in sessions)
    assert sorted(sizes) == [1, 2, 3, 4, 5]
    waits = [n.wait_after_ready for s in sessions for n in s.nodes[1:]]
    assert all(0.5 <= w <= 1.5 for w in waits)
    assert statistics.fmean(waits) == pytest.approx(1.0, abs=0.05)


def layers_of(session: Session) -> list[int]:
    """Each node's layer, read back from the structure (roots are layer 0)."""
    layer: list[int] = []
    for node in session.nodes:
        parent_layers = {layer[p] for p in node.parents}
        assert len(parent_layers) <= 1  # all parents sit in one layer
        layer.append(parent_layers.pop() + 1 if parent_layers else 0)
    assert layer == sorted(layer)  # nodes come layer by layer
    return layer


def test_a_branching_graph_with_fixed_shape_has_exactly_that_shape() -> None:
    spec = {
        "type": "branching",
        "num_layers_generator": fixed(3),
        "layer_width_generator": fixed(4),
        "fan_in_generator": fixed(2),
        "fan_out_generator": fixed(3),
        "request_wait_generator": fixed(0.25),
    }
    for session in take(generator(graph(spec)), 20):
        assert_valid_dag(session)
        assert layers_of(session) == [0] * 4 + [1] * 4 + [2] * 4
        children = Counter(p for n in session.nodes for p in n.parents)
        for node in session.nodes[4:]:
            assert len(node.parents) >= 2  # fan_in is a lower bound
            assert node.history_parent == node.parents[0]
            assert node.wait_after_ready == 0.25
        for node_id in range(8):
            assert children[node_id] >= 3  # fan_out is a lower bound


def test_random_branching_graphs_keep_every_structure_invariant() -> None:
    spec = {
        "type": "branching",
        "num_layers_generator": uniform(1, 5),
        "layer_width_generator": uniform(1, 6),
        "fan_in_generator": uniform(1, 4),
        "fan_out_generator": uniform(1, 4),
        "inherit_history": False,
    }
    shapes = set()
    for session in take(generator(graph(spec)), 300):
        assert_valid_dag(session)
        layer = layers_of(session)
        last = max(layer)
        children = Counter(p for n in session.nodes for p in n.parents)
        for node in session.nodes:
            assert node.history_parent is None
            if layer[node.node_id] > 0:
                assert node.parents  # reachable: every non-root hangs off the layer above
            if layer[node.node_id] < last:
                assert children[node.node_id] >= 1  # every non-leaf layer feeds the next
        shapes.add(tuple(Counter(layer).values()))
    assert len(shapes) > 20  # widths and depths really vary


def most_in_flight_together(session: Session) -> int:
    """The largest set of requests with no ancestor among each other: what can be in flight at once."""
    ancestors: list[set[int]] = []
    for node in session.nodes:
        ancestors.append(set(node.parents).union(*(ancestors[p] for p in node.parents)))

    def unrelated(a: int, b: int) -> bool:
        return a not in ancestors[b] and b not in ancestors[a]

    ids = range(len(session.nodes))
    best = 1
    while any(
        all(unrelated(a, b) for a, b in itertools.combinations(group, 2))
        for group in itertools.combinations(ids, best + 1)
    ):
        best += 1
    return best


def test_the_requests_a_session_can_have_in_flight_are_bounded_by_layers_and_width() -> None:
    # The driver sizes its connection pool by this bound. The widest layer is not one: a slow node
    # of one layer can still be in flight when the children of its quick siblings are sent.
    spec = {
        "type": "branching",
        "num_layers_generator": uniform(2, 3),
        "layer_width_generator": uniform(1, 3),
    }
    bound = requests_in_flight_per_session(build_benchmark_config({"session_generator": graph(spec)}))
    seen = [most_in_flight_together(s) for s in take(generator(graph(spec)), 300)]

    assert bound == 3 * (3 - 1) + 1
    assert max(seen) <= bound
    assert max(seen) > 3  # more than the widest layer


@pytest.mark.parametrize("session_graph", [{"type": "single_request"}, {"type": "linear"}])
def test_sessions_of_one_chain_have_one_request_in_flight(session_graph: dict[str, Any]) -> None:
    cfg = build_benchmark_config({"session_generator": graph(session_graph)})
    assert requests_in_flight_per_session(cfg) == 1


# ---------------------------------------------------------------- text


def test_prompt_and_output_lengths_follow_their_generators() -> None:
    spec = {
        **SEED_EXAMPLE,
        "output_spec": {"text": {"output_length_generator": uniform(10, 20)}},
    }
    gen = generator(spec)
    assert gen.token_count_source == COUNT_APPROXIMATE
    nodes = [n for s in take(gen, 200) for n in s.nodes]
    for node in nodes:
        assert 100 <= node.target_prompt_tokens <= 500
        assert node.num_content_tokens == node.target_prompt_tokens == count_tokens_approx(node.content)
        assert 10 <= node.requested_output_tokens <= 20
        assert node.channel == "text"
    assert statistics.fmean(n.target_prompt_tokens for n in nodes) == pytest.approx(300, abs=15)


def test_every_node_has_its_own_text() -> None:
    nodes = [n for s in take(generator(SEED_EXAMPLE), 50) for n in s.nodes]
    assert len({n.content.split()[:16].__repr__() for n in nodes}) == len(nodes)


def shared_prefix_spec(probability: float, ratio: float = 0.5) -> dict[str, Any]:
    return {
        "type": "synthetic",
        "session_graph": {"type": "linear", "num_request_generator": fixed(2)},
        "channels": [
            {
                "type": "text",
                "body_length_generator": uniform(100, 300),
                "shared_prefix_ratio": ratio,
                "shared_prefix_probability": probability,
            }
        ],
    }


def test_with_probability_one_every_first_prompt_starts_with_the_shared_prefix() -> None:
    sessions = take(generator(shared_prefix_spec(1.0, 0.5)), 30)

    def prefix_length(s: Session) -> int:
        return round(0.5 * s.nodes[0].target_prompt_tokens)

    longest = max(sessions, key=prefix_length)
    shared = longest.nodes[0].content.split()[: prefix_length(longest)]
    for s in sessions:
        k = prefix_length(s)
        words = s.nodes[0].content.split()
        assert words[:k] == shared[:k]
        assert words[k : k + 8] != shared[k : k + 8]  # the rest is the session's own
        assert s.nodes[1].content.split()[:8] != shared[:8]  # later turns carry no prefix
    assert (
        sessions[0].nodes[0].content
        != take(generator(shared_prefix_spec(1.0), seed=7), 1)[0].nodes[0].content
    )


def test_the_shared_prefix_probability_is_a_per_session_coin() -> None:
    sessions = take(generator(shared_prefix_spec(0.3, 1.0)), 1000)
    prefix = Counter(tuple(s.nodes[0].content.split()[:12]) for s in sessions).most_common(1)[0]
    assert prefix[1] / 1000 == pytest.approx(0.3, abs=0.05)


def test_without_shared_prefix_first_prompts_differ() -> None:
    firsts = {tuple(s.nodes[0].content.split()[:12]) for s in take(generator(shared_prefix_spec(0.0)), 200)}
    assert len(firsts) == 200


def test_exactly_one_text_channel_is_required() -> None:
    with pytest.raises(ConfigError, match="exactly one text channel"):
        generator({"type": "synthetic", "channels": []})


# ---------------------------------------------------------------- tokenizer


def test_with_a_tokenizer_prompt_counts_are_exact_tokenizer_counts(tmp_path: Path) -> None:
    path = train_tokenizer(tmp_path / "tok" / "tokenizer.json")
    load_tokenizer.cache_clear()
    gen = generator(SEED_EXAMPLE, client={"tokenizer": str(path.parent)})
    assert gen.token_count_source == COUNT_TOKENIZER
    tok = load_tokenizer(str(path.parent))
    for session in take(gen, 20):
        for node in session.nodes:
            assert node.num_content_tokens == node.target_prompt_tokens == tok.count(node.content)


def test_a_missing_tokenizer_stops_generation_with_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"client\.tokenizer"):
        generator(SEED_EXAMPLE, client={"tokenizer": str(tmp_path / "missing")})


# ---------------------------------------------------------------- determinism


def fingerprint(sessions: list[Session]) -> str:
    return hashlib.sha256(repr(sessions).encode()).hexdigest()


def test_the_same_seed_gives_byte_identical_sessions() -> None:
    spec = {**SEED_EXAMPLE, "session_graph": {"type": "branching", "request_wait_generator": uniform(0, 2)}}
    assert take(generator(spec), 100) == take(generator(spec), 100)
    assert fingerprint(take(generator(spec, seed=1), 100)) != fingerprint(take(generator(spec), 100))


def test_changing_one_generator_leaves_the_other_streams_alone() -> None:
    base = take(generator(SEED_EXAMPLE), 30)
    other_outputs = {**SEED_EXAMPLE, "output_spec": {"text": {"output_length_generator": fixed(7)}}}
    changed = take(generator(other_outputs), 30)
    assert [n.content for s in base for n in s.nodes] == [n.content for s in changed for n in s.nodes]
    assert {n.requested_output_tokens for s in changed for n in s.nodes} == {7}


FINGERPRINT_SCRIPT = """
import hashlib, sys
from veeksha.runner.sessions.factory import make_session_generator
from veeksha.shared.config_loader import build_benchmark_config
from tests.runner.sessions.test_synthetic import SEED_EXAMPLE
gen = make_session_generator(build_benchmark_config({"seed": 42, "session_generator": SEED_EXAMPLE}))
sessions = [gen.next_session() for _ in range(50)]
print(hashlib.sha256(repr(sessions).encode()).hexdigest())
"""


def test_sessions_are_identical_across_processes() -> None:
    repo = Path(__file__).resolve().parents[3]
    prints = {
        subprocess.run(
            [sys.executable, "-c", FINGERPRINT_SCRIPT],
            cwd=repo,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for hash_seed in ("0", "12345")
    }
    assert prints == {fingerprint(take(generator(SEED_EXAMPLE), 50))}


# ---------------------------------------------------------------- speed


def test_generating_a_seed_example_session_takes_well_under_a_millisecond() -> None:
    gen = generator(SEED_EXAMPLE)
    start = time.perf_counter()
    take(gen, 500)
    per_session = (time.perf_counter() - start) / 500
    assert per_session < 1e-3  # ~0.15 ms on a shared 2-core machine; the bound leaves slack


@pytest.mark.parametrize("where", ["channel", "generator"])
@pytest.mark.parametrize("pool", [1, 3])
def test_sessions_with_a_shared_prefix_pick_one_of_the_pool(pool: int, where: str) -> None:
    """The pool size may sit on the text channel or, where config.md puts it, on the generator."""
    channel = {"type": "text", "shared_prefix_ratio": 1.0, "shared_prefix_probability": 1.0}
    channel["body_length_generator"] = {"type": "fixed", "value": 40}
    sessions: dict = {"type": "synthetic", "channels": [channel]}
    (channel if where == "channel" else sessions)["shared_prefix_pool_size"] = pool
    gen = make_session_generator(build_benchmark_config({"seed": 4, "session_generator": sessions}))
    firsts = [gen.next_session().nodes[0] for _ in range(60)]
    assert all(n.shared_prefix_tokens == 40 for n in firsts)
    assert len({n.content for n in firsts}) == pool  # every prompt is its whole prefix here


def test_a_channels_own_prefix_pool_size_wins_over_the_generators() -> None:
    channel = {"type": "text", "shared_prefix_ratio": 1.0, "shared_prefix_probability": 1.0}
    channel |= {"body_length_generator": {"type": "fixed", "value": 40}, "shared_prefix_pool_size": 2}
    sessions = {"type": "synthetic", "channels": [channel], "shared_prefix_pool_size": 5}
    gen = make_session_generator(build_benchmark_config({"seed": 4, "session_generator": sessions}))
    assert len({gen.next_session().nodes[0].content for _ in range(60)}) == 2


def prefix_pool_sessions(pool: int, n: int = 100, build_every: int = 1) -> list[Session]:
    """Single-request sessions, each starting with half its prompt from one of `pool` prefixes; with
    `build_every` k, only every k-th is built (the others as a driver passes over another's)."""
    channel = {"type": "text", "shared_prefix_ratio": 0.5, "shared_prefix_probability": 1.0}
    gen = generator({"type": "synthetic", "channels": [channel], "shared_prefix_pool_size": pool})
    return [gen.next_session(build=i % build_every == 0) for i in range(n)]


def sent_before(sessions: list[Session]) -> list[int]:
    """Of each session's shared prefix, the tokens an earlier session's shared prefix held: found by
    comparing the prompts' words (one token each without a tokenizer)."""
    firsts = [(s.nodes[0].content.split(), s.nodes[0].shared_prefix_tokens) for s in sessions]
    found = []
    for i, (words, k) in enumerate(firsts):
        best = 0
        for earlier, k_earlier in firsts[:i]:
            common = next(
                (j for j, (a, b) in enumerate(zip(words, earlier, strict=False)) if a != b), len(words)
            )
            if common >= 8:  # two different prefixes may start with the same word or two by chance
                best = max(best, min(k, k_earlier, common))
        found.append(best)
    return found


@pytest.mark.parametrize("pool", [1, 50, 100])
def test_a_sessions_cacheable_prefix_is_only_what_an_earlier_session_sent(pool: int) -> None:
    """num_cacheable_prompt_tokens used to count the whole prefix: also for the first session using a
    pool prefix, and past the longest one sent before (claimed 0.500 of the prompts; 0.492, 0.246 and
    0.150 had been sent before with pools of 1, 50 and 100)."""
    sessions = prefix_pool_sessions(pool)
    cacheable = [s.nodes[0].cacheable_prefix_tokens for s in sessions]
    assert cacheable == sent_before(sessions)
    assert sum(cacheable) < sum(s.nodes[0].shared_prefix_tokens for s in sessions)


def test_sessions_a_driver_passes_over_still_count_as_sent_before() -> None:
    """Every driver walks the whole session stream (runner/driver/placement.py): the prefixes of
    sessions it does not build were sent by another driver, so they count the same."""
    every = prefix_pool_sessions(3)
    mine = prefix_pool_sessions(3, build_every=4)[::4]
    assert [s.nodes[0].cacheable_prefix_tokens for s in mine] == [
        s.nodes[0].cacheable_prefix_tokens for s in every[::4]
    ]
    assert [s.nodes[0].content for s in mine] == [s.nodes[0].content for s in every[::4]]


@pytest.mark.parametrize(
    "sessions, key",
    [
        (
            {"channels": [{"type": "text", "body_length_generator": {"type": "fixed", "value": 1e20}}]},
            "session_generator.channels.0.body_length_generator: 1e+20 is more than 10,000,000",
        ),
        (
            {"output_spec": {"text": {"output_length_generator": {"type": "uniform", "min": 1, "max": 2e7}}}},
            "session_generator.output_spec.text.output_length_generator: 2e+07 is more than 10,000,000",
        ),
        (
            {"session_graph": {"type": "linear", "num_request_generator": {"type": "fixed", "value": 1e20}}},
            "session_generator.session_graph.num_request_generator: 1e+20 is more than 10,000",
        ),
        (
            {
                "channels": [
                    {"type": "text", "body_length_generator": {"type": "normal", "mean": 100, "std": 1e8}}
                ]
            },
            "session_generator.channels.0.body_length_generator: 6e+08 is more than 10,000,000",
        ),
        (
            {
                "session_graph": {
                    "type": "linear",
                    "num_request_generator": {"type": "inverse_gaussian", "mean": 100, "shape": 0.01},
                }
            },
            "session_generator.session_graph.num_request_generator: 60100 is more than 10,000",
        ),
        (
            {
                "session_graph": {
                    "type": "branching",
                    "layer_width_generator": {"type": "normal", "mean": 4, "std": 5000},
                }
            },
            "session_generator.session_graph.layer_width_generator: 30004 is more than 10,000",
        ),
    ],
    ids=[
        "prompt-tokens",
        "output-tokens",
        "requests-per-session",
        "prompt-tokens-normal-tail",
        "requests-inverse-gaussian-tail",
        "layer-width-normal-tail",
    ],
)
def test_a_count_beyond_what_a_run_can_send_is_refused_when_the_generator_is_made(
    sessions: dict, key: str
) -> None:
    """It used to pass the config and fail deep in the run (OverflowError), or never finish a session.
    A distribution's spread counts (its reach, six deviations above the mean): judged by its mean,
    normal {mean: 100, std: 1e8} passed, then 45% of its prompts were cut to exactly 10M tokens."""
    cfg = build_benchmark_config({"session_generator": {"type": "synthetic", **sessions}})
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("+", r"\+")):
        make_session_generator(cfg)
