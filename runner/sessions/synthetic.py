"""Synthetic sessions (`session_generator: {type: synthetic}`): a sampled request graph with word prompts.

Every random quantity comes from its own named stream under the root seed (randomness.py), so the same
seed gives byte-identical sessions, and changing one generator leaves the others' values unchanged.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from veeksha.runner.sessions.lengths import (
    MAX_GRAPH_COUNT,
    MAX_TOKENS,
    make_count_sampler,
    make_length_sampler,
)
from veeksha.runner.sessions.model import RequestNode, Session
from veeksha.runner.sessions.prompts import PromptBuilder
from veeksha.runner.sessions.randomness import stream
from veeksha.runner.sessions.tokenizer import LocalTokenizer
from veeksha.shared.config import (
    BranchingGraph,
    LengthGen,
    LinearGraph,
    SingleRequestGraph,
    SyntheticSessions,
    TextChannel,
)
from veeksha.shared.errors import ConfigError

# ---------------------------------------------------------------- graph structure


@dataclass(slots=True, frozen=True)
class NodeShape:
    """One node's place in the graph, before content is attached."""

    parents: tuple[int, ...]
    history_parent: int | None
    wait_after_ready: float


GraphSampler = Callable[[], list[NodeShape]]


def make_graph_sampler(graph: SingleRequestGraph | LinearGraph | BranchingGraph, seed: int) -> GraphSampler:
    """A callable returning one session's node shapes (topological order) per call."""
    if isinstance(graph, SingleRequestGraph):
        root = [NodeShape((), None, 0.0)]
        return lambda: list(root)
    if isinstance(graph, LinearGraph):
        return _linear(graph, seed)
    if isinstance(graph, BranchingGraph):
        return _branching(graph, seed)
    raise TypeError(f"unknown session graph {graph!r}")


def graph_count(gen: LengthGen, seed: int, name: str, field: str) -> Callable[[], int]:
    """A session graph's count sampler (requests, layers, widths, fan), on its own named stream."""
    key = f"session_generator.session_graph.{field}"
    return make_count_sampler(gen, stream(seed, f"graph/{name}"), maximum=MAX_GRAPH_COUNT, key=key)


def _linear(graph: LinearGraph, seed: int) -> GraphSampler:
    num_requests = graph_count(graph.num_request_generator, seed, "num_requests", "num_request_generator")
    wait = make_length_sampler(graph.request_wait_generator, stream(seed, "graph/request_wait"))
    inherit = graph.inherit_history

    def sample() -> list[NodeShape]:
        shapes = [NodeShape((), None, 0.0)]
        for i in range(1, num_requests()):
            shapes.append(NodeShape((i - 1,), i - 1 if inherit else None, wait()))
        return shapes

    return sample


def _branching(graph: BranchingGraph, seed: int) -> GraphSampler:
    """Layers of nodes; each node of layer k>0 has parents in layer k-1 only.

    fan_in and fan_out are lower bounds (capped by the layer sizes): each child first picks
    fan_in distinct parents, then each parent short of its fan_out gains extra random children.
    Every parent thus feeds at least one child and every non-root node is reachable from a root.
    """
    num_layers = graph_count(graph.num_layers_generator, seed, "num_layers", "num_layers_generator")
    width = graph_count(graph.layer_width_generator, seed, "layer_width", "layer_width_generator")
    fan_in = graph_count(graph.fan_in_generator, seed, "fan_in", "fan_in_generator")
    fan_out = graph_count(graph.fan_out_generator, seed, "fan_out", "fan_out_generator")
    wait = make_length_sampler(graph.request_wait_generator, stream(seed, "graph/request_wait"))
    edges_rng = stream(seed, "graph/edges")
    inherit = graph.inherit_history

    def sample() -> list[NodeShape]:
        widths = [width() for _ in range(num_layers())]
        shapes = [NodeShape((), None, 0.0) for _ in range(widths[0])]
        prev_start = 0
        for k in range(1, len(widths)):
            prev_n, n = widths[k - 1], widths[k]
            start = prev_start + prev_n
            parents = [set(edges_rng.sample(range(prev_n), min(fan_in(), prev_n))) for _ in range(n)]
            for p in range(prev_n):
                missing = min(fan_out(), n) - sum(p in ps for ps in parents)
                if missing > 0:
                    free = [c for c in range(n) if p not in parents[c]]
                    for c in edges_rng.sample(free, missing):
                        parents[c].add(p)
            for ps in parents:
                ids = tuple(sorted(prev_start + p for p in ps))
                shapes.append(NodeShape(ids, ids[0] if inherit else None, wait()))
            prev_start = start
        return shapes

    return sample


def most_requests_in_flight(graph: SingleRequestGraph | LinearGraph | BranchingGraph) -> int:
    """The most requests of one session that can be in flight at once (what the driver sizes its
    connection pool by). Single-request and linear sessions send one at a time. In a branching one,
    requests in flight together have no ancestor among themselves, and a chain of nodes runs through
    every layer (each node has a parent in the layer before), so at most one of them lies on that
    chain: layers × (width − 1) + 1, at the generators' reach. The widest layer alone is no bound: a
    slow node of one layer can still be in flight when the children of its quick siblings are sent."""
    if not isinstance(graph, BranchingGraph):
        return 1
    layers = _count_reach(graph.num_layers_generator)
    width = _count_reach(graph.layer_width_generator)
    return layers * (width - 1) + 1


def _count_reach(gen: LengthGen) -> int:
    """The largest count a graph generator draws (bar a draw past six deviations, which is rare)."""
    return min(MAX_GRAPH_COUNT, max(1, math.floor(gen.reach() + 0.5)))


# ---------------------------------------------------------------- synthetic sessions


def text_channel_of(sg: SyntheticSessions) -> TextChannel:
    texts = [c for c in sg.channels if isinstance(c, TextChannel)]
    if len(texts) != 1:
        raise ConfigError(
            f"session_generator.channels: exactly one text channel is required (got {len(texts)}); "
            "e.g. channels: [{type: text, body_length_generator: {type: uniform, min: 100, max: 500}}]"
        )
    return texts[0]


class PrefixesSent:
    """Per prefix of the pool, the longest length an earlier session's prompt started with.

    A session's prefix is cacheable only as far as an earlier one sent it: not for the first session
    using a prefix, nor past the longest length sent before. Every driver walks the whole session
    stream in the same order (runner/driver/placement.py), so each counts the same.
    """

    def __init__(self, pool_size: int) -> None:
        self._longest = [0] * pool_size

    def send(self, pool_index: int, length: int) -> int:
        """Of `length` tokens of prefix `pool_index`, those sent before; then record this one."""
        longest = self._longest[pool_index]
        self._longest[pool_index] = max(longest, length)
        return min(length, longest)


class SyntheticSessionGenerator:
    """Sessions from `session_generator: {type: synthetic}`: a sampled graph, word prompts."""

    def __init__(self, sg: SyntheticSessions, seed: int, tokenizer: LocalTokenizer | None) -> None:
        text = text_channel_of(sg)
        self._graph = make_graph_sampler(sg.session_graph, seed)
        self._body_length = make_count_sampler(
            text.body_length_generator,
            stream(seed, "text/body_length"),
            maximum=MAX_TOKENS,
            key=f"session_generator.channels.{sg.channels.index(text)}.body_length_generator",
        )
        self._output_length = make_count_sampler(
            sg.output_spec.text.output_length_generator,
            stream(seed, "text/output_length"),
            maximum=MAX_TOKENS,
            key="session_generator.output_spec.text.output_length_generator",
        )
        pool_size = text.shared_prefix_pool_size or sg.shared_prefix_pool_size
        # Prefix 0 keeps the stream a single shared prefix always had: pool size 1 changes nothing.
        names = ["text/shared_prefix", *(f"text/shared_prefix/{i}" for i in range(1, pool_size))]
        self._prompts = PromptBuilder(tokenizer, [stream(seed, name) for name in names])
        self._pool_size = pool_size
        self._pool_pick = stream(seed, "text/shared_prefix_pool")
        self._prefixes_sent = PrefixesSent(pool_size)
        # Each session's words come from its own stream (seeded by the session id), so a driver can
        # pass over another driver's sessions without drawing their words (runner/driver/placement.py).
        self._words_base = stream(seed, "text/words").getrandbits(64)
        self._words = random.Random()
        self._prefix_coin = stream(seed, "text/shared_prefix_coin")
        self._prefix_ratio = text.shared_prefix_ratio
        self._prefix_probability = text.shared_prefix_probability
        self.token_count_source = self._prompts.token_count_source
        self._next_id = 0

    def next_session(self, build: bool = True) -> Session:
        """The next session; with `build` false a placeholder (its id, no nodes) that draws the same
        shapes and lengths, so the sessions after it are the same either way."""
        shapes = self._graph()
        nodes = []
        if build:
            self._words.seed(self._words_base + self._next_id)
        for node_id, shape in enumerate(shapes):
            target = self._body_length()
            prefix, pool_index, cacheable = 0, 0, 0
            if node_id == 0 and self._prefix_coin.random() < self._prefix_probability:
                prefix = round(self._prefix_ratio * target)
                pool_index = self._pool_pick.randrange(self._pool_size) if self._pool_size > 1 else 0
                # Also for a placeholder: another driver sends that session's prefix.
                cacheable = self._prefixes_sent.send(pool_index, prefix)
            output = self._output_length()
            if not build:
                continue
            content, count = self._prompts.build(target, self._words, prefix, pool_index)
            nodes.append(
                RequestNode(
                    node_id=node_id,
                    parents=shape.parents,
                    history_parent=shape.history_parent,
                    wait_after_ready=shape.wait_after_ready,
                    content=content,
                    target_prompt_tokens=target,
                    num_content_tokens=count,
                    requested_output_tokens=output,
                    shared_prefix_tokens=min(prefix, count),
                    cacheable_prefix_tokens=min(cacheable, count),
                )
            )
        session = Session(self._next_id, nodes if build else [])
        self._next_id += 1
        return session
