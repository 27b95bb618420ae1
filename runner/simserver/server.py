"""The built-in simulated OpenAI-compatible LLM server (HTTP side; timing lives in simulated_engine).

A plain HTTP/1.1 server on asyncio (uvloop) with `httptools` parsing inside an `asyncio.Protocol`: no
web framework, so it stays cheap next to the benchmark client on a small machine. Keep-alive,
content-length request bodies, `Transfer-Encoding: chunked` for streamed (SSE) responses and
close-delimited bodies for HTTP/1.0 clients. Pipelined requests are answered in order.

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, and
GET /sim/stats (engine counters: running, waiting, steps, admitted, kv_tokens_used, their peaks since
start, prefix cache queries and hits; with `precise` timing, how late the server wrote its chunks),
and GET /metrics (the same state in Prometheus text format, under vLLM's names).

An `Upgrade` header (curl --http2 asks for h2c) is ignored, as HTTP/1.1 allows: the request is
answered as any other. A body over MAX_BODY_BYTES is refused (413) as soon as its size is known.

Choices where OpenAI and the spec leave room (vLLM-like, since vLLM/SGLang are what users benchmark):
- the role-only first chat chunk is sent together with the first token (after prefill), and the
  finish_reason rides on the last content chunk; usage (`choices: []`) follows, then `[DONE]`;
- usage.prompt_tokens = count_tokens_approx summed over message contents (text parts of content
  lists) or over the prompt; a list of token ids counts its length;
- `max_completion_tokens` wins over `max_tokens`; `min_tokens` delays eos; n must be 1;
- the response echoes the request's `model` (any name is accepted);
- a request whose prompt + max tokens exceeds max_kv_tokens can never run: 400, as vLLM does for
  over-long prompts; error_rate failures are immediate 500s.

Run standalone with
    python -m veeksha.runner.simserver.server --config-json '{"port": 8000, ...}'
which prints `VEEKSHA_SIMULATED_SERVER_LISTENING <host> <port>` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import resource
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import httptools
import orjson
import uvloop
from veeksha.runner.open_files import raise_open_file_limit
from veeksha.runner.sessions.lengths import make_count_sampler
from veeksha.runner.sessions.randomness import stream
from veeksha.runner.sessions.tokenizer import count_tokens_approx
from veeksha.runner.simserver.engine import EngineRequest, SimulatedEngine, server_seed, token_text
from veeksha.runner.simserver.precise import PreciseEngine, precise_stats
from veeksha.runner.simserver.prefix_cache import PrefixCache
from veeksha.shared.config import SimulatedServerConfig
from veeksha.shared.errors import ConfigError, UsageError, VeekshaError
from veeksha.shared.records import (
    VLLM_CACHE_HITS,
    VLLM_CACHE_QUERIES,
    VLLM_GENERATION_TOKENS,
    VLLM_KV_USAGE,
    VLLM_RUNNING,
    VLLM_WAITING,
)
from veeksha.shared.schema import build

LISTENING_PREFIX = "VEEKSHA_SIMULATED_SERVER_LISTENING"
MAX_BODY_BYTES = 64 * 1024 * 1024

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Content Too Large",
    500: b"Internal Server Error",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
}
_DONE = b"data: [DONE]\n\n"
_TOO_LARGE = b"\x00body-too-large"  # stands in for the URL of a request whose body we refused
# How long a connection refused for its body size still reads (and drops) what its client sends after
# the 413: send_too_large.
_LINGER_S = 2.0


PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"


class BadRequest(Exception):
    """A request the simulated server refuses with 400 (message goes to the client)."""


def _error_body(status: int, message: str) -> bytes:
    err = {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "code": status}
    return orjson.dumps({"error": err})


def _head(status: int, content_type: bytes, keep_alive: bool, framing: bytes) -> bytes:
    conn = b"keep-alive" if keep_alive else b"close"
    return b"HTTP/1.1 %d %b\r\ncontent-type: %b\r\n%bconnection: %b\r\n\r\n" % (
        status,
        _REASONS.get(status, b"Unknown"),
        content_type,
        framing,
        conn,
    )


class _Upgrade(NamedTuple):
    """What the parser kept of a request whose Upgrade header is ignored (_Connection._ignore_upgrade)."""

    method: bytes
    url: bytes
    version: str
    keep_alive: bool


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and owns the response currently being written."""

    def __init__(self, app: _App):
        self.app = app
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._body: list[bytes] = []
        self._body_size = 0
        self._expect_continue = False
        self._content_length: int | None = None
        self._transfer_encoding: bytes | None = None
        self._upgrade: _Upgrade | None = None  # a request whose Upgrade header is being ignored
        self._closing = False  # no more requests are read here: what still arrives is discarded
        self._linger: asyncio.TimerHandle | None = None
        self._active: _Sink | None = None  # response in progress
        self._busy = False  # a response is in progress (the active sink or a synchronous one)
        self._draining = False
        self._pending: deque[tuple[bytes, bytes, bytes, bool, bool]] = deque()

    # asyncio.Protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # asyncio types it BaseTransport; a TCP one is a Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.app.note_descriptor(sock.fileno())

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:  # the rest of `data` is not HTTP to the parser
            self._ignore_upgrade(data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            if self._closing:  # refused mid-chunk: its answer is out or owed, and no other follows
                return
            if self._transport is not None and not self._busy:
                self.send_json(400, _error_body(400, f"malformed HTTP request: {exc}"), False)
            self._close()

    def eof_received(self) -> bool | None:
        """The client closed its side: it is gone, as uvicorn (and so vLLM) takes it. Its request is
        cancelled now, not generated to the end for nobody while holding a batch slot and KV (a
        client that gave up on a non-streamed answer sends nothing more that could fail)."""
        self._pending.clear()
        if self._active is not None:
            self._active.cancel()
            self._active = None
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._pending.clear()
        if self._linger is not None:
            self._linger.cancel()
        if self._active is not None:
            self._active.cancel()
            self._active = None

    # httptools callbacks ------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []
        self._body_size = 0
        self._expect_continue = False
        self._content_length = None
        self._transfer_encoding = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # `Expect: 100-continue` (curl sends it for large bodies), and the body's framing: what the
        # size limit and an ignored Upgrade need (llhttp keeps the length to itself).
        n = len(name)
        if n == 6 and name.lower() == b"expect":
            self._expect_continue = value.lower() == b"100-continue"
        elif n == 14 and name.lower() == b"content-length":
            self._content_length = int(value) if value.isdigit() else None  # (llhttp refuses the rest)
        elif n == 17 and name.lower() == b"transfer-encoding":
            self._transfer_encoding = value

    def on_headers_complete(self) -> None:
        if self._closing:
            return
        if self._content_length is not None and self._content_length > MAX_BODY_BYTES:
            self._refuse_body()  # known now: no 100 Continue, and the body is never read
        elif self._expect_continue and not (self._busy or self._pending) and self._transport is not None:
            # Not while a response is being written: the interim response would land inside it.
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._closing:
            return
        self._body_size += len(body)
        if self._body_size > MAX_BODY_BYTES:  # a chunked body, refused once it outgrows the limit
            self._body = []
            self._refuse_body()
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._closing:
            return
        p = self._parser
        if p.should_upgrade():  # its body, if any, is what the parser left over: see _ignore_upgrade
            self._upgrade = _Upgrade(p.get_method(), self._url, p.get_http_version(), p.should_keep_alive())
            return
        http10 = p.get_http_version() == "1.0"
        self._queue((p.get_method(), self._url, b"".join(self._body), p.should_keep_alive(), http10))

    # requests the parser does not finish ---------------------------------------------------------
    def _ignore_upgrade(self, rest: bytes) -> None:
        """An `Upgrade` request (curl --http2 asks for h2c): the parser ends the message at its headers
        and leaves the rest of the connection to the new protocol. No protocol is switched to, which
        HTTP/1.1 allows a server (RFC 9110 7.8): the request is replayed to a new parser without its
        Upgrade header, so its body is read as any request's and it is answered once, in turn."""
        request, self._upgrade = self._upgrade, None
        if self._closing or request is None:  # refused already (its body's size)
            return
        self._parser = httptools.HttpRequestParser(self)
        if request.method == b"CONNECT":  # a tunnel: nothing after it is HTTP; answered, then closed
            self._closing = True
            self._queue((request.method, request.url, b"", False, False))
            return
        # The body's framing and the connection's fate, as the client sent them; not Expect, which
        # was answered at the headers already.
        framing = b""
        if self._content_length is not None:
            framing += b"content-length: %d\r\n" % self._content_length
        if self._transfer_encoding is not None:
            framing += b"transfer-encoding: %b\r\n" % self._transfer_encoding
        connection = b"keep-alive" if request.keep_alive else b"close"
        head = b"%b %b HTTP/%b\r\n%bconnection: %b\r\n\r\n" % (
            request.method,
            request.url,
            request.version.encode(),
            framing,
            connection,
        )
        self.data_received(head + rest)

    def _refuse_body(self) -> None:
        """A body over MAX_BODY_BYTES: 413 now, or after the responses owed before it (not read
        meanwhile), then the connection closes; nothing more is read from it."""
        self._closing = True
        if (self._busy or self._pending) and self._transport is not None:
            self._transport.pause_reading()
        self._queue((b"POST", _TOO_LARGE, b"", False, False))

    def send_too_large(self) -> None:
        """The 413, then a lingering close: our side is shut at once (the client reads the answer and
        the end of the connection), and what the client still sends is read and dropped for a moment.
        A plain close with its body unread would send a reset, which can destroy the answer before
        the client reads it."""
        body = _error_body(413, "request body too large")
        self.write(_head(413, b"application/json", False, b"content-length: %d\r\n" % len(body)) + body)
        self._busy = False
        self._pending.clear()
        transport = self._transport
        if transport is None:
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        transport.resume_reading()
        self._linger = asyncio.get_running_loop().call_later(_LINGER_S, transport.close)

    # responses -----------------------------------------------------------------------------------
    def _queue(self, msg: tuple[bytes, bytes, bytes, bool, bool]) -> None:
        """Answer now, or after the responses owed before it (pipelining: answers go in order)."""
        if self._busy or self._pending:
            self._pending.append(msg)
        else:
            self._dispatch(msg)

    def _dispatch(self, msg: tuple[bytes, bytes, bytes, bool, bool]) -> None:
        self._busy = True
        self.app.handle(self, *msg)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def send_json(self, status: int, body: bytes, keep_alive: bool) -> None:
        self.send(status, b"application/json", body, keep_alive)

    def send(self, status: int, content_type: bytes, body: bytes, keep_alive: bool) -> None:
        head = _head(status, content_type, keep_alive, b"content-length: %d\r\n" % len(body))
        self.write(head + body)
        self.response_done(keep_alive)

    def start_stream(self, sink: _Sink, head: bytes) -> None:
        self._active = sink
        if head:
            self.write(head)

    def response_done(self, keep_alive: bool) -> None:
        self._active = None
        self._busy = False
        if not keep_alive:
            self._close()
        elif not self._draining:  # not re-entered from a synchronous response below
            self._drain()

    def _drain(self) -> None:
        """Answer pipelined requests in order; a streaming one pauses this until it finishes."""
        self._draining = True
        try:
            while self._pending and not self._busy and self._transport is not None:
                self._dispatch(self._pending.popleft())
        finally:
            self._draining = False


class _Sink:
    """Turns engine token ranges into one response; subclasses stream or buffer."""

    __slots__ = ("conn", "keep_alive", "offset", "on_finish", "req")

    def __init__(self, conn: _Connection, keep_alive: bool, offset: int):
        self.conn = conn
        self.keep_alive = keep_alive
        self.offset = offset
        self.req: EngineRequest | None = None
        self.on_finish: Callable[[int], None] | None = None  # called with the token count at the end

    def cancel(self) -> None:
        if self.req is not None:
            self.conn.app.engine.cancel(self.req)  # the engine keeps count of what still runs

    def on_tokens(self, start: int, end: int, finished: bool) -> None:
        raise NotImplementedError

    def on_steps(self, steps: list[tuple[int, int]], finished: bool) -> None:
        """Several steps at once (a precise-mode stream catching up): as on_tokens for each."""
        for i, (start, end) in enumerate(steps):
            self.on_tokens(start, end, finished and i == len(steps) - 1)


class _StreamSink(_Sink):
    """SSE events: `prefix + text + suffix` per step, framed as one HTTP chunk per write.

    Everything but the token text is precomputed per request; the finish reason and usage are known
    at admission (the engine decides the output length up front), so the last event is too.
    """

    __slots__ = ("chunked", "first", "last", "prefix", "reasoning", "reasoning_prefix", "suffix")
    # Set by SimulatedServer._prepare_stream before the sink is started.
    chunked: bool
    first: bytes
    last: bytes
    prefix: bytes
    suffix: bytes
    reasoning: int  # the first `reasoning` tokens go out as reasoning deltas
    reasoning_prefix: bytes

    def on_tokens(self, start: int, end: int, finished: bool) -> None:
        self._send(self._frame(start, end, finished), end, finished)

    def on_steps(self, steps: list[tuple[int, int]], finished: bool) -> None:
        """The same events as on_tokens for each step, in one write: a stream that fell behind
        catches up with one send, not one per step."""
        last = len(steps) - 1
        data = b"".join([self._frame(s, e, finished and i == last) for i, (s, e) in enumerate(steps)])
        self._send(data, steps[-1][1], finished)

    def _send(self, data: bytes, end: int, finished: bool) -> None:
        conn = self.conn
        conn.write(data)
        if finished:
            conn.response_done(self.keep_alive)
            if self.on_finish is not None:
                self.on_finish(end)

    def _frame(self, start: int, end: int, finished: bool) -> bytes:
        if start < self.reasoning:
            event = self._reasoning_events(start, end, finished)
        else:
            event = b"%b%b%b" % (
                self.prefix,
                token_text(self.offset, start, end),
                self.last if finished else self.suffix,
            )
        if start == 0 and self.first:
            event = self.first + event
        if self.chunked:
            frame = b"%x\r\n%b\r\n0\r\n\r\n" if finished else b"%x\r\n%b\r\n"
            event = frame % (len(event), event)
        return event

    def _reasoning_events(self, start: int, end: int, finished: bool) -> bytes:
        """Tokens [start, end) from inside the reasoning: a reasoning event, then an answer event
        for any of them past it. The last token is always an answer token."""
        cut = min(end, self.reasoning)
        event = self.reasoning_prefix + token_text(self.offset, start, cut) + self.suffix
        if cut < end:
            tail = self.last if finished else self.suffix
            event += self.prefix + token_text(self.offset, cut, end) + tail
        return event


class _FullSink(_Sink):
    """Non-streaming: one JSON body when the request finishes."""

    __slots__ = ("build", "reasoning")
    build: Callable[[str, str, str, int, int], dict[str, Any]]  # set by SimulatedServer._full_sink
    reasoning: int  # the first `reasoning` tokens are the message's reasoning

    def on_tokens(self, start: int, end: int, finished: bool) -> None:
        if finished:
            req = self.req
            assert req is not None
            r = self.reasoning
            thought = token_text(self.offset, 0, r).decode() if r else ""
            text = token_text(self.offset, r, end).decode()
            body = orjson.dumps(self.build(text, thought, req.finish_reason, req.prompt_tokens, end))
            self.conn.send_json(200, body, self.keep_alive)
            if self.on_finish is not None:
                self.on_finish(end)


def _int_param(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadRequest(f"'{name}' must be an integer ≥ {minimum}, got {value!r}")
    return value


def _bool_param(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be a boolean, got {value!r}")
    return value


def _chat_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    total = 0
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise BadRequest("each message must be an object with 'role' and 'content'")
        content = m.get("content")
        if isinstance(content, str):
            total += count_tokens_approx(content)
        elif isinstance(content, list):  # content parts: count the text ones
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += count_tokens_approx(part["text"])
        elif content is not None:
            raise BadRequest("message 'content' must be a string or a list of content parts")
    return total


def _prompt_words(body: dict[str, Any], chat: bool) -> list[str]:
    """The prompt as the prefix cache sees it: words, each message led by its role (already validated
    by the token counting)."""
    if not chat:
        prompt = body["prompt"]
        prompt = prompt[0] if isinstance(prompt, list) and len(prompt) == 1 else prompt
        return prompt.split() if isinstance(prompt, str) else [str(t) for t in prompt]
    words: list[str] = []
    for m in body["messages"]:
        content = m.get("content")
        parts: list[Any] = [content] if isinstance(content, str) else list(content or ())
        words.append(f"<{m.get('role')}>")
        for part in parts:  # a string, or content parts: the text ones
            text = part.get("text") if isinstance(part, dict) else part
            if isinstance(text, str):
                words += text.split()
    return words


def _completion_prompt_tokens(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return count_tokens_approx(prompt)
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return len(prompt)  # token ids
    raise BadRequest("'prompt' must be a string (one prompt per request) or a list of token ids")


def _last_descriptor() -> int:
    """The highest file descriptor this process may open (no bound: never reached)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return sys.maxsize if soft == resource.RLIM_INFINITY else soft - 1


class _App:
    """Routing, request validation and response templates."""

    def __init__(self, cfg: SimulatedServerConfig, engine: SimulatedEngine):
        self.cfg = cfg
        self.engine = engine
        seed = server_seed(cfg)
        self._error_rng = stream(seed, "server.errors")
        self._word_rng = stream(seed, "server.words")
        self._ids = itertools.count(1)
        self._last_fd = _last_descriptor()
        self._said_out_of_files = False
        self.prefix_cache = PrefixCache(engine.max_kv_tokens) if cfg.prefix_cache else None
        self._reasoning_tokens = make_count_sampler(
            cfg.reasoning_tokens, stream(seed, "server.reasoning"), minimum=0
        )
        created = int(time.time())
        self._models_body = orjson.dumps(
            {
                "object": "list",
                "data": [{"id": cfg.model, "object": "model", "created": created, "owned_by": "veeksha"}],
            }
        )

    def note_descriptor(self, fd: int) -> None:
        """uvloop (libuv) meets EMFILE on accept by accepting with a spare descriptor and closing the
        connection at once, telling no one: its client gets an empty reply, and nothing is logged. A
        connection given the last descriptor under the limit is the sign that the next accept
        fails: said once, on stderr (the launcher's log)."""
        if fd >= self._last_fd and not self._said_out_of_files:
            self._said_out_of_files = True
            print(
                f"simulated server: the open-file limit ({self._last_fd + 1}) is reached: new "
                "connections are closed unanswered; raise the limit (ulimit -n) and restart the server",
                file=sys.stderr,
                flush=True,
            )

    def stats(self) -> dict[str, float]:
        """Engine state for tests and debugging (GET /sim/stats); in precise mode also how late the
        server wrote its chunks (precise.precise_stats)."""
        e = self.engine
        lateness = precise_stats(e) if isinstance(e, PreciseEngine) else {}
        return {
            **lateness,
            "running": e.num_running,
            "waiting": e.num_waiting,
            "steps": e.steps,
            "admitted": e.admitted,
            "kv_tokens_used": e.kv_used,
            "peak_running": e.peak_running,
            "peak_waiting": e.peak_waiting,
            "peak_kv_tokens_used": e.peak_kv_tokens_used,
            "prefix_cache_queries": self.prefix_cache.queries if self.prefix_cache else 0,
            "prefix_cache_hits": self.prefix_cache.hits if self.prefix_cache else 0,
        }

    def metrics_text(self) -> str:
        """The engine's state as vLLM exposes it (Prometheus text format 0.0.4)."""
        e, cache = self.engine, self.prefix_cache
        model = self.cfg.model.replace("\\", "\\\\").replace('"', '\\"')
        label = f'{{model_name="{model}"}}'
        series = [
            (VLLM_RUNNING, "gauge", e.num_running),
            (VLLM_WAITING, "gauge", e.num_waiting),
            (VLLM_KV_USAGE, "gauge", e.kv_used / e.max_kv_tokens),
            (VLLM_CACHE_QUERIES, "counter", cache.queries if cache else 0),
            (VLLM_CACHE_HITS, "counter", cache.hits if cache else 0),
            (VLLM_GENERATION_TOKENS, "counter", e.generated_tokens),
        ]
        lines = []
        for name, kind, value in series:
            lines += [f"# TYPE {name} {kind}", f"{name}{label} {float(value)!r}"]
        return "\n".join(lines) + "\n"

    def handle(
        self, conn: _Connection, method: bytes, url: bytes, body: bytes, keep: bool, http10: bool
    ) -> None:
        path = url.split(b"?", 1)[0]
        if path in (b"/v1/chat/completions", b"/v1/completions"):
            if method != b"POST":
                conn.send_json(405, _error_body(405, f"use POST for {path.decode()}"), keep)
                return
            self._completion(conn, body, keep, http10, chat=path == b"/v1/chat/completions")
        elif path == b"/v1/models" and method == b"GET":
            conn.send_json(200, self._models_body, keep)
        elif path == b"/health" and method == b"GET":
            conn.send_json(200, b'{"status":"ok"}', keep)
        elif path == b"/sim/stats" and method == b"GET":
            conn.send_json(200, orjson.dumps(self.stats()), keep)
        elif path == b"/metrics" and method == b"GET":
            conn.send(200, PROMETHEUS_TEXT, self.metrics_text().encode(), keep)
        elif path == _TOO_LARGE:
            conn.send_too_large()
        else:
            msg = f"no route for {method.decode()} {path.decode(errors='replace')}"
            conn.send_json(404, _error_body(404, msg), keep)

    def _completion(self, conn: _Connection, raw: bytes, keep: bool, http10: bool, *, chat: bool) -> None:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            conn.send_json(400, _error_body(400, f"request body is not valid JSON: {exc}"), keep)
            return
        try:
            if not isinstance(body, dict):
                raise BadRequest("request body must be a JSON object")
            self._start(conn, body, keep, http10, chat)
        except BadRequest as exc:
            conn.send_json(400, _error_body(400, str(exc)), keep)

    def _start(self, conn: _Connection, body: dict[str, Any], keep: bool, http10: bool, chat: bool) -> None:
        cfg = self.cfg
        prompt_tokens = _chat_prompt_tokens(body) if chat else _completion_prompt_tokens(body)
        max_tokens = _int_param(body, "max_completion_tokens", 1)
        if max_tokens is None:
            max_tokens = _int_param(body, "max_tokens", 1)
        if max_tokens is None:
            max_tokens = int(cfg.default_max_tokens)
        min_tokens = _int_param(body, "min_tokens", 0) or 0
        if min_tokens > max_tokens:
            raise BadRequest(f"'min_tokens' ({min_tokens}) must not exceed max tokens ({max_tokens})")
        if body.get("n") is not None and (type(body["n"]) is not int or body["n"] != 1):
            raise BadRequest("the simulated server supports only n = 1")
        ignore_eos = _bool_param(body, "ignore_eos")
        stream = _bool_param(body, "stream")
        opts = body.get("stream_options")
        include_usage = stream and isinstance(opts, dict) and opts.get("include_usage") is True
        model = body.get("model")
        model = model if isinstance(model, str) and model else cfg.model
        kv = prompt_tokens + max_tokens
        if kv > self.engine.max_kv_tokens:
            raise BadRequest(
                f"prompt ({prompt_tokens}) + max tokens ({max_tokens}) exceeds the KV capacity "
                f"of {self.engine.max_kv_tokens} tokens"
            )
        if cfg.error_rate > 0 and self._error_rng.random() < cfg.error_rate:
            conn.send_json(500, _error_body(500, "simulated server error (error_rate)"), keep)
            return
        if http10:
            keep = False
        rid = (b"chatcmpl-sim-%d" if chat else b"cmpl-sim-%d") % next(self._ids)
        offset = self._word_rng.randrange(1 << 16)
        limit, reason = self.engine.output_limit(max_tokens, min_tokens, ignore_eos)
        # As on vLLM, max_tokens bounds reasoning and answer together: reasoning first, and at least one
        # answer token after it. Completions have no reasoning field.
        reasoning = min(self._reasoning_tokens(), limit - 1) if chat else 0
        sink: _Sink
        if stream:
            sink = _StreamSink(conn, keep, offset)
            sink.reasoning = reasoning
            usage = (prompt_tokens, limit, reasoning) if include_usage else None
            self._prepare_stream(sink, rid, model, chat, reason, usage, http10)
        else:
            sink = self._full_sink(conn, keep, offset, rid.decode(), model, chat)
            sink.reasoning = reasoning
        req = EngineRequest(prompt_tokens, limit, reason, kv, sink)
        if self.prefix_cache is not None:
            words = _prompt_words(body, chat)
            req.cached_tokens = min(self.prefix_cache.lookup(words), max(0, prompt_tokens - 1))
            sink.on_finish = self._remember(words, offset, reasoning, chat)
        sink.req = req
        self.engine.submit(req)

    def _remember(self, words: list[str], offset: int, reasoning: int, chat: bool) -> Callable[[int], None]:
        """At the end of a request: cache its prompt and answer as the next turn will send them back."""
        cache = self.prefix_cache
        assert cache is not None

        def remember(end: int) -> None:
            answer = token_text(offset, reasoning, end).decode().split()
            cache.remember([*words, "<assistant>", *answer] if chat else [*words, *answer])

        return remember

    def _prepare_stream(
        self,
        sink: _StreamSink,
        rid: bytes,
        model: str,
        chat: bool,
        reason: str,
        usage: tuple[int, int, int] | None,
        http10: bool,
    ) -> None:
        obj = b"chat.completion.chunk" if chat else b"text_completion"
        common = b'{"id":"%b","object":"%b","created":%d,"model":%b' % (
            rid,
            obj,
            int(time.time()),
            orjson.dumps(model),
        )
        if chat:
            sink.prefix = b'data: %b,"choices":[{"index":0,"delta":{"content":"' % common
            field = self.cfg.reasoning_field.encode()
            sink.reasoning_prefix = b'data: %b,"choices":[{"index":0,"delta":{"%b":"' % (common, field)
            tail = b'"},"logprobs":null,"finish_reason":%b}]}\n\n'
            sink.first = (
                b'data: %b,"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
                b'"logprobs":null,"finish_reason":null}]}\n\n' % common
            )
        else:
            sink.prefix = b'data: %b,"choices":[{"index":0,"text":"' % common
            sink.reasoning_prefix = b""
            tail = b'","logprobs":null,"finish_reason":%b}]}\n\n'
            sink.first = b""
        sink.suffix = tail % b"null"
        last = tail % (b'"' + reason.encode() + b'"')
        if usage is not None:
            prompt, completion, reasoning = usage
            details = (
                b',"completion_tokens_details":{"reasoning_tokens":%d}' % reasoning if reasoning else b""
            )
            last += (
                b'data: %b,"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,'
                b'"total_tokens":%d%b}}\n\n' % (common, prompt, completion, prompt + completion, details)
            )
        sink.last = last + _DONE
        sink.chunked = not http10
        framing = b"transfer-encoding: chunked\r\n" if sink.chunked else b""
        head = _head(200, b"text/event-stream", sink.keep_alive, b"cache-control: no-cache\r\n" + framing)
        sink.conn.start_stream(sink, head)

    def _full_sink(
        self, conn: _Connection, keep: bool, offset: int, rid: str, model: str, chat: bool
    ) -> _FullSink:
        sink = _FullSink(conn, keep, offset)
        created = int(time.time())

        def build(text: str, thought: str, reason: str, prompt: int, completion: int) -> dict[str, Any]:
            usage: dict[str, Any] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            message = {"role": "assistant", "content": text}
            if thought:
                message[self.cfg.reasoning_field] = thought
                usage["completion_tokens_details"] = {"reasoning_tokens": sink.reasoning}
            if chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": reason,
                }
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
                obj = "text_completion"
            return {
                "id": rid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
            }

        sink.build = build
        conn.start_stream(sink, b"")
        return sink


class SimulatedServer:
    """A simulated server listening on the running event loop (see `start_simulated_server`).
    `host`, `port`: the address it announces (listening_address)."""

    def __init__(self, server: asyncio.Server, engine: SimulatedEngine):
        self._server = server
        self.engine = engine
        self.sockets = list(server.sockets)
        self.host, self.port = listening_address(self.sockets)

    async def close(self) -> None:
        self._server.close()
        with contextlib.suppress(Exception):
            self._server.close_clients()  # type: ignore[attr-defined]  # Python 3.13+
        await self._server.wait_closed()


async def start_simulated_server(cfg: SimulatedServerConfig) -> SimulatedServer:
    """Bind and start serving on the running loop; `cfg.port == 0` picks a free port."""
    loop = asyncio.get_running_loop()
    engine = PreciseEngine(cfg, loop) if cfg.precise is not None else SimulatedEngine(cfg, loop)
    app = _App(cfg, engine)
    server = await loop.create_server(
        lambda: _Connection(app), cfg.host, int(cfg.port), reuse_address=True, backlog=4096
    )
    return SimulatedServer(server, engine)


def listening_address(sockets: Sequence[socket.socket]) -> tuple[str, int]:
    """The (host, port) to announce. A host bound in both families ("" or a name such as localhost)
    has a socket per family, on different ports when the port was 0: the IPv4 one is announced, as
    clients reach every interface ("", 0.0.0.0) over 127.0.0.1 (server_launcher.client_host)."""
    chosen = next((s for s in sockets if s.family == socket.AF_INET), sockets[0])
    host, port = chosen.getsockname()[:2]
    return host, port


def announce_listening(host: str, port: int) -> None:
    """The one stdout line the launcher waits for."""
    sys.stdout.write(f"{LISTENING_PREFIX} {host} {port}\n")
    sys.stdout.flush()


async def _serve(cfg: SimulatedServerConfig, announce: Callable[[str, int], None] | None) -> None:
    server = await start_simulated_server(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Only possible in the main thread; elsewhere the caller stops us some other way.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    if announce is not None:
        announce(server.host, server.port)
    try:
        await stop.wait()
    finally:
        await server.close()


def serve(cfg: SimulatedServerConfig, announce: Callable[[str, int], None] | None = None) -> None:
    """Run the simulated server until SIGTERM/SIGINT (blocking). `announce(host, port)` is called
    once the socket accepts connections."""
    raise_open_file_limit()  # before the first connection: each is a file descriptor
    uvloop.run(_serve(cfg, announce))


def config_from_json(text: str, host: str | None = None, port: int | None = None) -> SimulatedServerConfig:
    """A validated SimulatedServerConfig from a JSON object (unknown keys are errors), `host` and
    `port` given over it; ConfigError when it is not one."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(
            f"--config-json is not valid JSON ({exc}); give a JSON object, e.g. '{{\"port\": 8000}}'"
        ) from None
    if isinstance(data, dict):  # (anything else is refused by build, naming what it expected)
        data.update({k: v for k, v in (("host", host), ("port", port)) if v is not None})
    return build(SimulatedServerConfig, data, "server")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m veeksha.runner.simserver.server", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config-json", default="{}", help="SimulatedServerConfig fields as JSON")
    parser.add_argument("--host", help="override the config's host")
    parser.add_argument("--port", type=int, help="override the config's port (0 = free port)")
    args = parser.parse_args(argv)
    from veeksha.runner.server_launcher import check_server_port

    try:
        cfg = config_from_json(args.config_json, args.host, args.port)
        # One line naming the key, not a bind traceback, for a port in use or a host not ours.
        host_key = "--host" if args.host is not None else "server.host"
        check_server_port(cfg, host_key, "--port" if args.port is not None else "server.port")
    except VeekshaError as exc:
        print(f"simulated server: {exc}", file=sys.stderr)
        return UsageError.exit_code
    serve(cfg, announce_listening)
    return 0


if __name__ == "__main__":
    sys.exit(main())
