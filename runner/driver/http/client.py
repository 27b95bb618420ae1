"""The driver's LLM client: public interface (LLMClient, make_client) and the one error boundary.

    client = make_client(cfg.client, max_connections=256)
    outcome = await client.request(messages, max_tokens=128)
    await client.aclose()

A request can also be sent in steps, so that the moment of sending does no work beyond writing:
`prepare` builds the body before its due time, `start` writes it at once (synchronously, on an idle
keep-alive connection, or leaves it to `complete` when none is idle), and `complete` awaits the
response. The driver starts due requests from inside other connections' reads (transport.DueHook).

`request` never raises for server or network failures: every RequestError (errors.py's tree, where each
class names its records.ERROR_TYPES value) is turned into Outcome fields (outcome.py) in `_fail`, and
nowhere else. Cancellation is not a failure: the connection is closed and CancelledError
propagates to the caller, who records the request as cancelled.

Timing: `picked_up_at` is taken when `request` starts, before a connection is taken from the pool or
opened, so time spent connecting counts toward the request's latency (as a user would see it). The one
wait that does not count is for room in the client's own pool (every connection busy, none may be
opened): the request is picked up when it has room, and its deadline starts then (`complete`).
`completed_at` is the arrival of `[DONE]`, else of the end of the body, else the moment of failure.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from veeksha.runner.driver.http.deadlines import RequestDeadlines
from veeksha.runner.driver.http.errors import RequestError, RequestTimeout, reader_failure
from veeksha.runner.driver.http.openai import (
    BODY_HEAD_BYTES,
    CUT_MARK,
    RequestBuilder,
    ResponseReader,
    one_line,
    preview,
)
from veeksha.runner.driver.http.outcome import Outcome
from veeksha.runner.driver.http.transport import (
    DueHook,
    HTTPTransport,
    Room,
    Started,
    url_credentials,
    without_user_info,
)
from veeksha.shared import redact
from veeksha.shared.config import BenchmarkConfig, ClientConfig
from veeksha.shared.redact import scrub_text
from veeksha.shared.schema import to_dict

if TYPE_CHECKING:
    from veeksha.runner.driver.http.transport import _Connection

USER_AGENT = "veeksha"


class Prepared:
    """One request between `prepare` and `complete`."""

    __slots__ = ("body", "claimed", "out", "reader", "started")

    def __init__(self, body: bytes, out: Outcome, reader: ResponseReader) -> None:
        self.body = body
        self.out = out
        self.reader = reader
        self.claimed: _Connection | None = None  # the idle connection `claim` took for it
        self.started: Started | None = None  # written by `start` on that connection


class LLMClient(Protocol):
    is_stream: bool

    async def request(self, payload: list[dict[str, Any]] | str, max_tokens: int) -> Outcome: ...

    def prepare(self, payload: list[dict[str, Any]] | str, max_tokens: int) -> Prepared: ...

    def claim(self, prepared: Prepared) -> bool: ...

    def start(self, prepared: Prepared, now: float) -> bool: ...

    async def complete(self, prepared: Prepared) -> Outcome: ...

    def abandon(self, prepared: Prepared) -> None: ...

    def set_due_hook(self, hook: DueHook) -> None: ...

    async def aclose(self) -> None: ...


class Backend(Protocol):
    """What carries the bytes: transport.HTTPTransport (native) or httpx_backend.HttpxTransport."""

    async def send(
        self, body: bytes, handler: ResponseReader, started: Started | None = None, room: Room | None = None
    ) -> None: ...

    async def aclose(self) -> None: ...


def build_headers(cfg: ClientConfig) -> list[tuple[str, str]]:
    """Request headers in a fixed order; user `headers` replace defaults of the same name."""
    merged: dict[str, tuple[str, str]] = {
        "user-agent": ("User-Agent", USER_AGENT),
        "accept": ("Accept", "text/event-stream" if cfg.stream else "application/json"),
        "content-type": ("Content-Type", "application/json"),
    }
    if cfg.api_key:
        # The one place the key is revealed: it goes on the wire.
        merged["authorization"] = ("Authorization", f"Bearer {cfg.api_key.reveal()}")
    if basic := url_credentials(cfg.api_base or ""):
        # Credentials written into api_base (a proxy's Basic auth) win over api_key, which may come
        # from OPENAI_API_KEY unasked, as httpx has always put them; a user's own header wins over both.
        merged["authorization"] = ("Authorization", basic)
    for name, value in cfg.headers.items():
        merged[name.lower()] = (name, value)
    return list(merged.values())


def secret_values(cfg: ClientConfig, extra: Iterable[str] = ()) -> list[str]:
    """Strings that must never appear in an error message: the API key, auth-like header values, the
    environment's secrets, and `extra` (the server's secrets: a server may echo its own token in an
    error)."""
    out = list(extra)
    if cfg.api_key:
        key = cfg.api_key.reveal()
        out += [f"Bearer {key}", key]
    # Servers echo the request body in validation errors: secrets there must not reach records.
    out += redact.secret_values(cfg.additional_sampling_params)
    out += redact.secret_values(cfg.api_base or "")  # ?key=... or a password in the URL
    out += redact.secret_values({redact.HEADERS: dict(cfg.headers)})  # any header but the plain ones
    # A launched server inherits the environment and may echo it: variables named like secrets
    # (WANDB_API_KEY, HF_TOKEN), credentials in URLs (HTTPS_PROXY).
    out += redact.environment_secrets(os.environ)
    return redact.scrub_list(out)


def run_secret_values(cfg: BenchmarkConfig) -> list[str]:
    """Every secret of a run, for what the runner shows or writes of text a server sent (the
    trace's content, a probe's error): the client's and the environment's (secret_values), and the
    server section's (a launched server may echo its own)."""
    server = redact.secret_values(to_dict(cfg.server)) if cfg.server is not None else []
    return secret_values(cfg.client, server)


class OpenAIClient:
    """LLMClient for openai_chat_completions / openai_completions over any Backend."""

    def __init__(self, cfg: ClientConfig, backend: Backend, extra_secrets: Iterable[str] = ()) -> None:
        self._builder = RequestBuilder(cfg)
        self._backend = backend
        # The native transport's pool, whose waits are kept out of latencies (`complete`).
        self._pool = backend if isinstance(backend, HTTPTransport) else None
        self.is_stream = cfg.stream
        self._deadlines = RequestDeadlines(cfg.request_timeout)  # > 0: the config refuses anything else
        self._secrets = secret_values(cfg, extra_secrets)

    async def request(self, payload: list[dict[str, Any]] | str, max_tokens: int) -> Outcome:
        prepared = self.prepare(payload, max_tokens)
        prepared.out.picked_up_at = perf_counter()
        return await self.complete(prepared)

    def prepare(self, payload: list[dict[str, Any]] | str, max_tokens: int) -> Prepared:
        """Everything a request needs before its due time: the body, the response reader."""
        out = Outcome()
        return Prepared(self._builder.body(payload, max_tokens), out, ResponseReader(out, self.is_stream))

    def claim(self, prepared: Prepared) -> bool:
        """Take an idle keep-alive connection for a prepared request, writing nothing yet: the
        driver notes the dispatch where a kill cannot take it (driver/dispatch_ring.py) before its
        bytes can reach the server. False when there is none (`complete` then connects and sends)."""
        pool = self._pool  # None with httpx: it has no synchronous send
        if prepared.claimed is None and pool is not None:
            prepared.claimed = pool.idle_connection()
        return prepared.claimed is not None

    def start(self, prepared: Prepared, now: float) -> bool:
        """Send a prepared request at `now` on its claimed (else any idle) keep-alive connection, if
        there is one; False if not (`complete` then connects and sends, and `now` still counts as
        its start)."""
        prepared.out.picked_up_at = now
        pool = self._pool
        if pool is not None and self.claim(prepared):
            conn, prepared.claimed = prepared.claimed, None
            assert conn is not None  # claim's
            prepared.started = pool.begin_on(conn, prepared.body, prepared.reader)
        return prepared.started is not None

    def abandon(self, prepared: Prepared) -> None:
        """A claimed or started request whose `complete` will never run (cancelled in between)."""
        if prepared.claimed is not None and self._pool is not None:  # (only a pool claims)
            self._pool.give_back(prepared.claimed)
            prepared.claimed = None
        if prepared.started is not None:
            prepared.started.abandon()
            prepared.started = None

    def set_due_hook(self, hook: DueHook) -> None:
        if isinstance(self._backend, HTTPTransport):
            self._backend.due_hook = hook

    async def complete(self, prepared: Prepared) -> Outcome:
        """Await the response of a prepared request (sending it first, if `start` could not)."""
        out, reader, started = prepared.out, prepared.reader, prepared.started
        prepared.started = None
        room = None
        pool = self._pool
        if started is None and pool is not None and pool.is_full():
            # Every connection of our own pool is busy: waiting for one is the client's time, not
            # the server's. The request is picked up (t_send) once it has room, and its deadline
            # starts then; the wait shows as dispatch → pick-up (a lifecycle delay health checks).
            room = await pool.reserve()
            out.picked_up_at = perf_counter()
        deadlines = self._deadlines
        key = deadlines.start()
        try:
            try:
                await self._backend.send(prepared.body, reader, started, room)
            except asyncio.CancelledError:
                if not deadlines.expired(key):  # a shutdown, not the deadline
                    raise
                if not reader.finished:  # a deadline after [DONE] (while draining) is no failure
                    raise RequestTimeout(f"no complete response within {deadlines.timeout_s} s") from None
            finally:
                deadlines.end(key)
        except RequestError as exc:
            self._fail(out, exc)
        except Exception as exc:  # the response reader raised: the request still gets its record
            self._fail(out, reader_failure(exc))
        else:
            # Not raised: a raised failure's traceback would hold this frame, whose `reader` holds
            # the failure, a reference cycle per failed request.
            if reader.failure is not None:
                self._fail(out, reader.failure)
        finally:
            reader.finalize()
        return out

    def _fail(self, out: Outcome, exc: RequestError) -> None:
        """The one place where a failure becomes record fields."""
        out.status = exc.status
        out.error_type = exc.error_type
        # Scrub before shortening: a secret cut in half by the shortening would survive the scrub.
        message = scrub_text(exc.message or exc.error_type, self._secrets)
        if message.endswith(CUT_MARK):  # cut at openai.RAW_MESSAGE_CHARS, before this scrub
            message = without_cut_secret(message.removesuffix(CUT_MARK), self._secrets) + CUT_MARK
        if exc.body_head is not None:
            message += f"; body: {preview(self._scrubbed_head(exc.body_head))}"
        out.error_message = one_line(message)
        if exc.http_status is not None:
            out.http_status = exc.http_status
        if out.completed_at is None:
            out.completed_at = perf_counter()

    def _scrubbed_head(self, body_head: bytes) -> str:
        """The body's first bytes, scrubbed. They were cut (openai.BODY_HEAD_BYTES) before any scrub
        could see them, and the preview squeezes whitespace away, so the start of a secret cut
        there may come into view: drop it too."""
        head = scrub_text(body_head.decode("utf-8", "replace"), self._secrets)
        if len(body_head) < BODY_HEAD_BYTES:  # the whole body: nothing was cut
            return head
        return without_cut_secret(head.rstrip("\ufffd"), self._secrets)  # and a character cut in two

    async def aclose(self) -> None:
        self._deadlines.close()
        await self._backend.aclose()


def without_cut_secret(text: str, secrets: list[str]) -> str:
    """`text`, which was cut at its end, without the start of a secret that ran across the cut:
    scrub_text replaces whole secrets only."""
    end = len(text)
    for secret in secrets:
        if len(secret) >= redact.MIN_SCRUBBED_LEN:  # as scrub_text: shorter ones are not scrubbed at all
            end = min(end, _cut_secret_start(text, secret))
    return text[:end]


def _cut_secret_start(text: str, secret: str) -> int:
    """Where the longest end of `text` that is a start of `secret` begins; len(text) if none."""
    i = text.find(secret[0], max(0, len(text) - len(secret) + 1))
    while i != -1 and not secret.startswith(text[i:]):
        i = text.find(secret[0], i + 1)
    return len(text) if i == -1 else i


def endpoint_url(api_base: str, path: str) -> str:
    """`http://h/v1` + `/chat/completions`, keeping a query string (`?api-version=...`) at the end.
    The one URL join: the requests and the `/models` probe (runner/benchmark.py) both use it."""
    parts = urlsplit(api_base)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + path))


def make_client(cfg: ClientConfig, max_connections: int, extra_secrets: Iterable[str] = ()) -> LLMClient:
    """Client for `cfg` with at most `max_connections` sockets; `extra_secrets` are scrubbed from
    error messages too."""
    if not cfg.api_base:
        raise ValueError("client.api_base is not resolved (runner/benchmark.py resolve_endpoint)")
    builder = RequestBuilder(cfg)
    url = without_user_info(endpoint_url(cfg.api_base, builder.path))
    connect_timeout = cfg.connect_timeout
    headers = build_headers(cfg)
    backend_name = cfg.http_backend
    backend: Backend
    if backend_name == "native":
        backend = HTTPTransport(url, headers, max_connections, connect_timeout)
    elif backend_name == "httpx":
        from veeksha.runner.driver.http.httpx_backend import HttpxTransport  # off the hot path: lazy

        backend = HttpxTransport(url, headers, max_connections, connect_timeout)
    else:
        raise ValueError(f"unknown http_backend {backend_name!r} (native or httpx)")
    return OpenAIClient(cfg, backend, extra_secrets)
