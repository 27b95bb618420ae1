"""httpx backend: the same Backend interface as transport.HTTPTransport, for setups the native transport
does not cover (HTTP proxies from HTTP(S)_PROXY / ALL_PROXY, unusual TLS). Off the hot path: it costs
several times the CPU per request of the native transport (see scripts/bench_client.py).

Bytes from `aiter_bytes` go into the same ResponseReader, timestamped once per chunk; httpx's exception
tree is translated to ours here, so the error boundary in client.py stays the only mapping to records.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from time import perf_counter
from typing import Any

import httpx
from veeksha.runner.driver.http.errors import (
    SWITCHED_PROTOCOLS,
    ConnectError,
    ConnectionDropped,
    ConnectTimeout,
    ProtocolError,
    RequestError,
    RequestTimeout,
)
from veeksha.runner.driver.http.openai import ResponseReader
from veeksha.runner.driver.http.transport import (
    DRAIN_TIMEOUT_S,
    MAX_STALE_RETRIES,
    STALE_CLOSE_WINDOW_S,
    Origin,
    Room,
    Started,
    without_user_info,
)


def translate(exc: httpx.HTTPError) -> RequestError:
    """httpx exception → our exception tree (the error type is decided by the class we pick)."""
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return ConnectTimeout(f"connect timed out: {msg}")
    if isinstance(exc, httpx.ConnectError | httpx.ProxyError | httpx.UnsupportedProtocol):
        return ConnectError(f"cannot connect: {msg}")
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeout(f"timed out: {msg}")
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.CloseError):
        return ConnectionDropped(f"connection dropped: {msg}")
    if isinstance(exc, httpx.RemoteProtocolError):
        low = msg.lower()
        if "disconnected" in low or "closed" in low or "incomplete" in low:
            return ConnectionDropped(f"server closed the connection: {msg}")
        if "_switch_upgrade" in low:  # h11's word for a 101 nobody asked for
            return ProtocolError(SWITCHED_PROTOCOLS)
        return ProtocolError(f"invalid HTTP response: {msg}")
    return ProtocolError(f"{type(exc).__name__}: {msg}")


class HttpxTransport:
    def __init__(
        self,
        url: str,
        headers: list[tuple[str, str]],
        max_connections: int,
        connect_timeout: float | None,
    ) -> None:
        Origin(url)  # same URL validation (and ConfigError) as the native transport
        # The URL's credentials are in the headers already (client.build_headers): left in the URL,
        # httpx would put them over a header the user chose.
        self._url = without_user_info(url)
        n = max(1, int(max_connections))
        self._client = httpx.AsyncClient(
            headers=headers,
            # Only the connect deadline here; the whole-request deadline is the caller's.
            timeout=httpx.Timeout(None, connect=connect_timeout or None),
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
            trust_env=True,
        )

    async def send(
        self, body: bytes, handler: ResponseReader, started: Started | None = None, room: Room | None = None
    ) -> None:
        # `started` and `room` are always None here: only the native transport starts requests
        # synchronously, or reserves room in its pool (httpx's own pool waits count as latency).
        retries = 0
        while True:
            attempt = _Attempt()
            try:
                await self._send(body, handler, attempt)
                return
            except httpx.RemoteProtocolError as exc:
                # A keep-alive close that crossed the request: sent again, as the native transport does.
                if retries == MAX_STALE_RETRIES or not _crossed(exc, handler, attempt):
                    raise translate(exc) from None
                retries += 1
            except httpx.HTTPError as exc:
                raise translate(exc) from None

    async def _send(self, body: bytes, handler: ResponseReader, attempt: _Attempt) -> None:
        try:
            extensions = {"trace": attempt.trace}
            async with self._client.stream("POST", self._url, content=body, extensions=extensions) as resp:
                handler.on_start(resp.status_code, resp.headers.get("content-type"))
                chunks = resp.aiter_bytes()
                async for chunk in chunks:
                    if handler.on_body(chunk, perf_counter()):
                        if handler.failure is None:
                            await self._drain(chunks)
                        return
                # No Content-Length, no chunked encoding: a close ended the body (as transport.py).
                h = resp.headers
                closed = "content-length" not in h and "transfer-encoding" not in h
                handler.on_end(perf_counter(), closed=closed and resp.status_code not in (204, 304))
        except httpx.HTTPError:
            if handler.finished and handler.failure is None:
                return  # the response was complete at [DONE]; only the tail of the body broke
            raise

    @staticmethod
    async def _drain(chunks: AsyncIterator[bytes]) -> None:
        """Read the body's tail after [DONE] so httpx can reuse the connection (bounded wait)."""
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                async for _ in chunks:
                    pass
        except TimeoutError:
            pass  # leaving the stream context closes the connection instead

    async def aclose(self) -> None:
        await self._client.aclose()


class _Attempt:
    """Of one attempt, what the native transport knows of its own connections and httpx tells only
    through httpcore's trace: whether it opened a connection, and when the request was written.
    About 10 trace calls a request, 2-3 µs, of the several CPU-ms an httpx request costs."""

    __slots__ = ("fresh", "written_at")

    def __init__(self) -> None:
        self.fresh = False
        self.written_at: float | None = None

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "http11.send_request_body.complete":
            self.written_at = perf_counter()
        elif event == "connection.connect_tcp.started":
            self.fresh = True


def _crossed(exc: httpx.RemoteProtocolError, handler: ResponseReader, attempt: _Attempt) -> bool:
    """A reused connection closed before a response byte and before the request was written or
    right after (transport.STALE_CLOSE_WINDOW_S): a keep-alive close that crossed the request on the
    wire. A later close, or one of a new connection, is a server dropping a request it had: a resend
    would load it with a request the run never counts, and hide the failure."""
    if attempt.fresh or handler.out.http_status is not None or "without sending a response" not in str(exc):
        return False
    written = attempt.written_at
    return written is None or perf_counter() - written <= STALE_CLOSE_WINDOW_S
