"""The batching model behind the simulated server: one engine loop doing continuous batching.

Each step admits waiting requests first-come-first-served while the batch has room (`max_batch_size`)
and the KV budget holds (prompt + maximum output of every running request ≤ `max_kv_tokens`), then
"runs" for

    decode_step_base + decode_step_per_seq * batch_size + per_token_prefill_time * admitted_prompt_tokens

seconds, after which every running request has `tokens_per_chunk` more tokens. Latency therefore grows
with the batch, and beyond capacity requests queue: a capacity search meets a real knee.

The engine knows nothing about HTTP. Each request carries a `sink` that is told which token range was
produced; the server turns that into bytes. All streams of a step are emitted in one loop pass.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from typing import Protocol

from veeksha.runner.sessions.randomness import stream
from veeksha.shared.config import DEFAULT_SEED, SimulatedServerConfig

log = logging.getLogger(__name__)

# One word = one token, each token is " word". Plain lowercase ASCII words: no JSON escaping needed,
# and one token in common BPE vocabularies.
WORDS: tuple[str, ...] = (
    "the", "of", "and", "to", "in", "is", "it", "that", "for", "on",
    "with", "as", "was", "at", "by", "this", "from", "or", "an", "are",
    "be", "not", "but", "all", "can", "one", "has", "more", "time", "will",
    "data", "model", "light", "water", "river", "stone", "house", "green", "small", "world",
    "paper", "music", "north", "table", "cloud", "bread", "field", "glass", "night", "train",
    "garden", "window", "market", "silver", "simple", "number", "people", "system", "energy", "future",
    "answer", "letter", "circle", "summer",
)  # fmt: skip
TOKEN_BYTES: tuple[bytes, ...] = tuple((" " + w).encode() for w in WORDS)

# When a step callback fires late (timer rounding, a busy CPU delaying our wake-up), the next step
# still starts when the previous one ended in model time, so the model's step rate, and with it the
# capacity a benchmark finds, does not depend on scheduler hiccups; a few steps may then run back to
# back. Lateness beyond this bound (a stopped or starved process) is dropped rather than replayed as
# a long burst.
_MAX_CATCHUP_S = 0.050


def server_seed(cfg: SimulatedServerConfig) -> int:
    """The seed the server's random streams derive from by name (runner/sessions/randomness.py): in a
    run, the root seed unless server.seed is given; a standalone server has no run, and uses the
    default root seed."""
    return DEFAULT_SEED if cfg.seed is None else cfg.seed


def token_text(offset: int, start: int, end: int) -> bytes:
    """The generated text of tokens [start, end) of a request whose words start at `offset`."""
    n = len(TOKEN_BYTES)
    if end - start == 1:
        return TOKEN_BYTES[(offset + start) % n]
    return b"".join([TOKEN_BYTES[(offset + i) % n] for i in range(start, end)])


class TokenSink(Protocol):
    def on_tokens(self, start: int, end: int, finished: bool) -> None:
        """Tokens [start, end) were produced; `finished` means the request left the batch."""


class EngineRequest:
    """One generation in the engine. `limit` is how many tokens it will produce in total."""

    __slots__ = (
        "cached_tokens",
        "cancelled",
        "finish_reason",
        "generated",
        "kv",
        "limit",
        "prompt_tokens",
        "sink",
    )

    def __init__(self, prompt_tokens: int, limit: int, finish_reason: str, kv: int, sink: TokenSink):
        self.prompt_tokens = prompt_tokens
        self.limit = limit
        self.finish_reason = finish_reason
        self.kv = kv
        self.sink = sink
        self.generated = 0
        self.cancelled = False
        self.cached_tokens = 0  # prompt tokens found in the prefix cache: no prefill cost


class SimulatedEngine:
    """Continuous-batching timing model driven by the running asyncio loop's timers."""

    def __init__(self, cfg: SimulatedServerConfig, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._tpc = int(cfg.tokens_per_chunk)
        self._max_batch = int(cfg.max_batch_size)
        self.max_kv_tokens = int(cfg.max_kv_tokens)
        self._base = float(cfg.decode_step_base)
        self._per_seq = float(cfg.decode_step_per_seq)
        self._prefill = float(cfg.per_token_prefill_time)
        self._eos_p = float(cfg.per_token_eos_probability)
        self._honor_ignore_eos = bool(cfg.honor_ignore_eos)
        self._eos_rng = stream(server_seed(cfg), "server.eos")
        self._waiting: deque[EngineRequest] = deque()
        self._running: list[EngineRequest] = []
        self.kv_used = 0
        self._busy = False  # a step is scheduled or in flight
        self._step_end = 0.0
        self.steps = 0
        self.generated_tokens = 0  # every token every request got (vllm:generation_tokens_total)
        self.admitted = 0
        # High-water marks since start (GET /sim/stats): a state that lasted one step is still seen
        # by whoever asks later. peak_waiting is the queue's length, which keeps a request cancelled
        # while queued until it reaches the head.
        self.peak_running = 0
        self.peak_waiting = 0
        self.peak_kv_tokens_used = 0

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        # Cancelled requests leave the queue only when they reach its head: not waiting any more.
        return sum(1 for req in self._waiting if not req.cancelled)

    def cancel(self, req: EngineRequest) -> None:
        """Its client left: the request is dropped at its next step (its slot and KV freed there)."""
        req.cancelled = True

    def output_limit(self, max_tokens: int, min_tokens: int, ignore_eos: bool) -> tuple[int, str]:
        """How many tokens a request will produce and why it stops ("length" or "stop")."""
        p = self._eos_p
        if p <= 0.0 or (ignore_eos and self._honor_ignore_eos):
            return max_tokens, "length"
        # Tokens up to and including the eos token: geometric, one draw per request rather than
        # one per token.
        u = self._eos_rng.random()
        # As vLLM: eos is masked for the first min_tokens tokens, then each token may be eos.
        eos_len = min_tokens + (1 if p >= 1.0 else int(math.log1p(-u) / math.log1p(-p)) + 1)
        if eos_len <= max_tokens:
            return eos_len, "stop"
        return max_tokens, "length"

    def submit(self, req: EngineRequest) -> None:
        self._waiting.append(req)
        self.peak_waiting = max(self.peak_waiting, len(self._waiting))
        if not self._busy:
            self._busy = True
            # call_soon, not an immediate step: requests arriving in the same loop pass share a step.
            self._loop.call_soon(self._begin_idle_step)

    def _admit(self) -> int:
        """Move waiting requests into the batch (FCFS, no skipping); return their prompt tokens."""
        waiting, running = self._waiting, self._running
        prompt = 0
        while waiting and len(running) < self._max_batch:
            req = waiting[0]
            if req.cancelled:
                waiting.popleft()
                continue
            if self.kv_used + req.kv > self.max_kv_tokens and running:
                break
            waiting.popleft()
            running.append(req)
            self.admitted += 1
            self.kv_used += req.kv
            prompt += req.prompt_tokens - req.cached_tokens
        self.peak_running = max(self.peak_running, len(running))
        self.peak_kv_tokens_used = max(self.peak_kv_tokens_used, self.kv_used)
        return prompt

    def _begin_idle_step(self) -> None:
        self._begin_step(self._loop.time())

    def _begin_step(self, start: float) -> None:
        prompt = self._admit()
        if not self._running:
            self._busy = False
            return
        duration = self._base + self._per_seq * len(self._running) + self._prefill * prompt
        self._step_end = start + duration
        self._loop.call_at(self._step_end, self._end_step)

    def _end_step(self) -> None:
        # The next step starts when this one ended in model time, not after we have written the
        # tokens out: emitting costs CPU, not model time. Only real lateness beyond the catch-up
        # allowance moves the clock.
        next_start = max(self._step_end, self._loop.time() - _MAX_CATCHUP_S)
        self.steps += 1
        k = self._tpc
        keep: list[EngineRequest] = []
        for req in self._running:
            if req.cancelled:
                self.kv_used -= req.kv
                continue
            start = req.generated
            end = start + k
            finished = end >= req.limit
            if finished:
                end = req.limit
                self.kv_used -= req.kv
            else:
                keep.append(req)
            req.generated = end
            self.generated_tokens += end - start
            try:
                req.sink.on_tokens(start, end, finished)
            except Exception:  # one broken stream must not stop the engine for everyone
                log.exception("simulated engine: dropping a request whose sink failed")
                if not finished:
                    keep.pop()
                    self.kv_used -= req.kv
        self._running = keep
        self._begin_step(next_start)
