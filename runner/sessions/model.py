"""What the benchmark sends: a session is a DAG of requests in topological order.

The driver dispatches a node once all its parents completed and its think time passed; with a history
parent the node's messages continue that parent's conversation (its messages + its user turn + the
reply actually received). Generators (synthetic.py, traces.py) make sessions; the driver runs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

TEXT = "text"


@dataclass(slots=True)
class RequestNode:
    node_id: int  # unique within the session, 0..n-1, topological order
    parents: tuple[int, ...]  # all must complete before this node is ready
    history_parent: int | None  # this node continues that node's conversation
    wait_after_ready: float  # think time (s) after the last parent completes; 0 for roots
    content: str  # this node's new user turn (or the prompt, for completions)
    target_prompt_tokens: int  # target token count of `content`
    num_content_tokens: int  # its actual count (exact with a tokenizer, else the approximation)
    requested_output_tokens: int
    channel: str = TEXT
    shared_prefix_tokens: int = 0  # the run's shared prefix at the start of `content`
    # Of those, the ones an earlier session of the schedule sent (what a prefix cache can hold): known
    # when the session is made, so the driver only reads it.
    cacheable_prefix_tokens: int = 0


@dataclass(slots=True)
class Session:
    session_id: int
    nodes: list[RequestNode]  # topological order
    # Timed trace replay only: when the session starts, in seconds from the start of the run.
    arrival_offset: float | None = None


class SessionGenerator(Protocol):
    token_count_source: str  # shared.records COUNT_TOKENIZER or COUNT_APPROXIMATE

    def next_session(self, build: bool = True) -> Session | None:
        """The next session; None once a finite trace (wrap: false) is exhausted. With `build` false,
        a placeholder with the same id and arrival offset but no nodes, cheap to make: what a driver
        draws for a session another driver runs (runner/driver/placement.py)."""
        ...
