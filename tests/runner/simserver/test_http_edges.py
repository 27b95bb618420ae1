"""HTTP/1.1 corners of the simulated server, in raw bytes over loopback: an `Upgrade` it ignores
(curl --http2 asks for h2c), and bodies over the size limit refused as soon as that is known."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import orjson
import pytest
from veeksha.runner.server_launcher import ServerHandle
from veeksha.runner.simserver.server import MAX_BODY_BYTES

from tests.runner.simserver.test_server import FAST, chat_body, sim_server

H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    with sim_server(**FAST, model="sim-model") as handle:
        yield handle


@pytest.fixture()
def conn(server: ServerHandle) -> Iterator[socket.socket]:
    port = int(server.api_base.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        yield sock


def post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    head = b"POST %b HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%b" % (path, extra)
    return head + b"Content-Length: %d\r\n\r\n%b" % (len(body), body)


def read_until(sock: socket.socket, done: bytes, timeout: float = 5) -> bytes:
    """Bytes until `done` was received, the server closed, or `timeout`."""
    data = b""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.2)
    while done not in data and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
    return data


def closed_by_server(sock: socket.socket, timeout: float = 5) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


# --- Upgrade: h2c ------------------------------------------------------------------------------------


def test_an_h2c_upgrade_is_ignored_and_the_body_is_read(conn: socket.socket) -> None:
    # The parser stopped at the upgrade: the body was lost ("not valid JSON", 400), then a second 400
    # ("protocol upgrades are not supported") went out on the same connection.
    body = orjson.dumps(chat_body(max_tokens=3))
    conn.sendall(post(b"/v1/chat/completions", body, H2C) + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    data = read_until(conn, b'{"status":"ok"}')
    assert data.count(b"HTTP/1.1 ") == 2, data  # one answer each, no upgrade, no error
    first, second = data.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and b'"completion_tokens":3' in first, first
    assert second.startswith(b"200 ") and second.endswith(b'{"status":"ok"}')


def test_an_h2c_upgrade_without_a_body_is_answered_once_and_keeps_the_connection(conn: socket.socket) -> None:
    conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + H2C + b"\r\n")
    first = read_until(conn, b'{"status":"ok"}')
    conn.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    second = read_until(conn, b"sim-model")
    assert first.count(b"HTTP/1.1 ") == 1 and first.startswith(b"HTTP/1.1 200 "), first
    assert second.startswith(b"HTTP/1.1 200 ") and b"sim-model" in second, second


def test_an_upgrade_behind_a_stream_in_flight_waits_its_turn(conn: socket.socket) -> None:
    streamed = orjson.dumps(chat_body(max_tokens=5, stream=True))
    upgraded = orjson.dumps(chat_body(max_tokens=2))
    conn.sendall(post(b"/v1/chat/completions", streamed) + post(b"/v1/chat/completions", upgraded, H2C))
    data = read_until(conn, b'"completion_tokens":2')
    stream_end = data.index(b"data: [DONE]\n\n\r\n0\r\n\r\n")  # the stream, whole and first
    assert data.count(b"HTTP/1.1 ") == 2 and data.index(b"HTTP/1.1 200", stream_end) > stream_end, data
    assert b"HTTP/1.1 400" not in data


# --- bodies over the limit ---------------------------------------------------------------------------


def test_a_declared_length_over_the_limit_gets_413_not_100_continue(conn: socket.socket) -> None:
    # It was answered "100 Continue", and then read the body in full before its 413.
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
    conn.sendall(head + b"Content-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1))
    data = read_until(conn, b"too large")
    assert data.startswith(b"HTTP/1.1 413 "), data
    assert b"100 Continue" not in data and b"connection: close" in data.lower()
    assert closed_by_server(conn)


def test_an_oversized_body_is_refused_before_it_is_sent(conn: socket.socket) -> None:
    # No Expect: the client starts sending; the 413 comes at once, not after 64 MiB were read.
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
    conn.sendall(head + b"Content-Length: %d\r\n\r\n" % (2 * MAX_BODY_BYTES) + b"x" * 65536)
    data = read_until(conn, b"too large", timeout=3)
    assert data.startswith(b"HTTP/1.1 413 "), data
    assert closed_by_server(conn)


def test_a_chunked_body_is_refused_once_it_grows_over_the_limit(conn: socket.socket) -> None:
    conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * (1 << 20)
    frame = b"%x\r\n%b\r\n" % (len(piece), piece)
    with contextlib.suppress(OSError):  # sending into a refused connection may fail midway
        for _ in range(MAX_BODY_BYTES // len(piece) + 2):
            conn.sendall(frame)
    data = read_until(conn, b"too large", timeout=3)  # never the terminating chunk
    assert data.startswith(b"HTTP/1.1 413 "), data


def test_a_body_within_the_limit_is_still_continued_and_answered(conn: socket.socket) -> None:
    body = orjson.dumps(chat_body(max_tokens=2))
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
    conn.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body))
    assert read_until(conn, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.sendall(body)
    data = read_until(conn, b'"completion_tokens":2')
    assert data.startswith(b"HTTP/1.1 200 "), data


def test_an_oversized_body_behind_a_stream_is_refused_in_turn(conn: socket.socket) -> None:
    streamed = orjson.dumps(chat_body(max_tokens=5, stream=True))
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
    conn.sendall(
        post(b"/v1/chat/completions", streamed) + head + b"Content-Length: %d\r\n\r\n" % (2 * MAX_BODY_BYTES)
    )
    data = read_until(conn, b"too large")
    stream_end = data.index(b"data: [DONE]\n\n\r\n0\r\n\r\n")  # the stream, whole and first
    assert data.index(b"HTTP/1.1 413", stream_end) > stream_end, data
    assert data.count(b"HTTP/1.1 ") == 2 and b"100 Continue" not in data
    assert closed_by_server(conn)


def test_connect_is_answered_once_and_the_tunnel_closed(conn: socket.socket) -> None:
    conn.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01")
    data = read_until(conn, b"}}")
    assert data.count(b"HTTP/1.1 ") == 1 and data.startswith(b"HTTP/1.1 404 "), data
    assert closed_by_server(conn)
