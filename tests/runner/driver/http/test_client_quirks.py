"""Both client backends against the quirk server: what each server misbehaviour turns into.

Every case is a real request over loopback HTTP to tests/runner/driver/http/quirk_server.py; the Outcome is
what the driver records (status, error_type, http_status, content chunks, text, usage).
"""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import uvloop
from veeksha.runner.driver.http.client import make_client
from veeksha.runner.driver.http.openai import PREVIEW_CHARS, RAW_MESSAGE_CHARS, RequestBuilder, ResponseReader
from veeksha.runner.driver.http.outcome import Outcome
from veeksha.shared.config import ClientConfig
from veeksha.shared.config_loader import build_benchmark_config, dump_config_yaml
from veeksha.shared.records import ERROR, ERROR_TYPES, SUCCESS, TIMEOUT

from tests.runner.driver.http.quirk_server import (
    BIG_CONTENT,
    FALSY_ERRORS,
    MAX_HANG_S,
    PORTAL_TITLE,
    QuirkServer,
)

BACKENDS = ["native", "httpx"]
API_KEY = "sk-test-SECRET-4242"


def request(base: str, backend: str, payload: object = "hi", **kw: object) -> Outcome:
    cfg = ClientConfig(
        **{"api_base": base, "model": "m", "http_backend": backend, "request_timeout": 5.0, **kw}
    )

    async def go() -> Outcome:
        client = make_client(cfg, max_connections=4)
        try:
            return await client.request(payload, 8)  # type: ignore[arg-type]
        finally:
            await client.aclose()

    return uvloop.run(go())


def assert_standard(out: Outcome) -> None:
    """The reference stream (quirk_server.STANDARD) read correctly."""
    assert (out.status, out.error_type, out.error_message) == (SUCCESS, None, None)
    assert out.http_status == 200
    assert len(out.chunk_times) == 3
    assert out.text == "Hello world"
    assert (out.prompt_tokens, out.completion_tokens, out.finish_reason) == (7, 3, "stop")
    assert out.picked_up_at is not None and out.completed_at is not None
    assert out.picked_up_at < out.chunk_times[0] <= out.chunk_times[-1] <= out.completed_at
    assert out.chunk_times == sorted(out.chunk_times)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "quirk",
    [
        "basic",  # role-only first chunk, usage missing / null, usage chunk with choices: []
        "split",  # chunk boundaries and read boundaries in the middle of events and framing
        "crlf",  # \r\n endings, `:` keep-alives, several events per read
        "no_done",  # the end of the body ends the stream
        "content_length",  # Content-Length instead of chunked
        "close_delimited",  # neither: the body ends when the server closes
        "no_content_type",  # sniffed as SSE
        "sse_as_text_plain",  # a wrong content type, sniffed as SSE by its first bytes
        "informational",  # a 100 Continue before the real response
    ],
)
def test_streams_that_must_read_as_the_reference(quirks: QuirkServer, backend: str, quirk: str) -> None:
    assert_standard(request(quirks.base(quirk), backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_request_on_the_wire(quirks: QuirkServer, backend: str) -> None:
    base = quirks.base("basic") + "?tag=" + backend
    out = request(base, backend, api_key=API_KEY, headers={"X-Run": "r1"})
    assert out.status == SUCCESS
    seen = [r for r in quirks.seen("basic") if r.path.endswith("tag=" + backend)][-1]
    assert seen.path == f"/basic/v1/chat/completions?tag={backend}"
    assert seen.headers["authorization"] == f"Bearer {API_KEY}"
    assert seen.headers["x-run"] == "r1"
    assert seen.headers["content-type"] == "application/json"
    cfg = ClientConfig(api_base=base, model="m")
    assert seen.body == RequestBuilder(cfg).body("hi", 8)


def test_a_key_hidden_from_every_printed_form_still_goes_on_the_wire(quirks: QuirkServer) -> None:
    base = quirks.base("basic") + "?tag=secret-type"
    cfg = build_benchmark_config({"client": {"api_base": base, "model": "m", "api_key": API_KEY}})
    assert API_KEY not in f"{cfg!r} {cfg}" and API_KEY not in dump_config_yaml(cfg)
    assert request(base, "native", api_key=cfg.client.api_key).status == SUCCESS
    seen = [r for r in quirks.seen("basic") if r.path.endswith("tag=secret-type")][-1]
    assert seen.headers["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("quirk", "status", "error_type", "http_status", "chunks", "text", "message"),
    [
        ("json_error_200", ERROR, "server_error", 200, 0, "", "model is overloaded"),
        ("http_400", ERROR, "http_error", 400, 0, "", "HTTP 400: max_tokens is too large"),
        ("http_500_text", ERROR, "http_error", 500, 0, "", "HTTP 500: Internal Server Error"),
        ("midstream_error", ERROR, "server_error", 200, 2, "Hello", "engine died"),
        ("error_event", ERROR, "server_error", 200, 1, "Hel", "out of memory"),
        ("drop", ERROR, "connection_dropped", 200, 2, "Hello", "closed"),
        ("reset", ERROR, "connection_dropped", 200, 1, "Hel", ""),
        ("reset_before", ERROR, "connection_dropped", None, 0, "", ""),
        # A generation the server cut off is no answer, whatever arrived before.
        ("abort_finish", ERROR, "server_error", 200, 2, "Hello", "finish_reason 'abort'"),
        ("error_finish", ERROR, "server_error", 200, 1, "Hel", "finish_reason 'error'"),
        ("error_event_string", ERROR, "server_error", 200, 1, "Hel", "model overloaded"),
        ("error_event_null", ERROR, "server_error", 200, 1, "Hel", "server error event"),
        ("error_event_not_utf8", ERROR, "server_error", 200, 1, "Hel", "server error event"),
        ("reset_close_delimited", ERROR, "connection_dropped", 200, 1, "Hel", ""),
        # A clean close ends a body without framing, but a stream it ends without [DONE] and
        # without a finish_reason was cut short (a server crash closes its sockets cleanly too).
        ("close_delimited_cut", ERROR, "connection_dropped", 200, 2, "Hello", "no [DONE], no finish_reason"),
        ("close_delimited_cut_before_content", ERROR, "connection_dropped", 200, 0, "", "no [DONE]"),
        ("json_error_as_event_stream", ERROR, "server_error", 200, 0, "", "model is overloaded"),
        # llama.cpp's llama-server sends a streaming error as an `error:` field, then [DONE].
        ("llama_error_field", ERROR, "server_error", 200, 1, "Hel", "server error in stream: decode failed"),
        ("llama_error_field_first", ERROR, "server_error", 200, 0, "", "decode failed"),
        # Error objects deeper than orjson writes (it reads them): still the server's error.
        ("deep_error_event", ERROR, "server_error", 200, 1, "Hel", "nested too deeply"),
        ("deep_error_500", ERROR, "http_error", 500, 0, "", "HTTP 500: (an error object nested too deeply"),
    ],
)
def test_failures(
    quirks: QuirkServer,
    backend: str,
    quirk: str,
    status: str,
    error_type: str,
    http_status: int | None,
    chunks: int,
    text: str,
    message: str,
) -> None:
    t0 = time.perf_counter()
    out = request(quirks.base(quirk), backend, api_key=API_KEY)
    assert time.perf_counter() - t0 < 2  # never waits for a body that will not end
    assert (out.status, out.error_type, out.http_status) == (status, error_type, http_status)
    assert error_type in ERROR_TYPES
    assert len(out.chunk_times) == chunks and out.text == text  # what arrived is kept
    assert out.error_message and message in out.error_message
    assert "\n" not in out.error_message and "Traceback (most recent" not in out.error_message
    assert API_KEY not in out.error_message
    assert out.completed_at is not None and out.picked_up_at is not None


# A server that streams close-delimited (no Content-Length, no chunked encoding), and is SIGKILLed
# after its third token: the kernel closes its socket with a clean FIN.
KILLED_SERVER = r"""
import socket, sys, time
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(8)
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
data = b""
while b"\r\n\r\n" not in data:
    data += conn.recv(65536)
head, _, body = data.partition(b"\r\n\r\n")
length = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
while len(body) < int(length[0].split(b":")[1]):
    body += conn.recv(65536)  # all of it: unread bytes would make the kernel close with a RST
conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
for i in range(60):
    conn.sendall(b'data: {"choices":[{"index":0,"delta":{"content":"t"},"finish_reason":null}]}\n\n')
    if i == 2:
        print("sent", flush=True)
    time.sleep(0.05)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_close_delimited_stream_of_a_killed_server_is_connection_dropped(backend: str) -> None:
    server = subprocess.Popen([sys.executable, "-c", KILLED_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())

        def kill_after_three_tokens() -> None:
            if server.stdout.readline().strip() == "sent":
                server.send_signal(signal.SIGKILL)

        killer = threading.Thread(target=kill_after_three_tokens, daemon=True)
        killer.start()
        out = request(f"http://127.0.0.1:{port}/v1", backend)
        killer.join(5)
    finally:
        server.kill()
        server.wait(5)
        server.stdout.close()
    assert server.returncode == -signal.SIGKILL
    assert (out.status, out.error_type, out.http_status) == (ERROR, "connection_dropped", 200)
    assert "no [DONE], no finish_reason" in out.error_message
    assert 3 <= len(out.chunk_times) < 60 and out.finish_reason is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("quirk", ["chunked_no_done_no_finish", "content_length_no_done_no_finish"])
def test_a_framed_stream_ended_without_done_or_finish_reason_is_a_success(
    quirks: QuirkServer, backend: str, quirk: str
) -> None:
    """Lenient on purpose: its framing says the server ended the body (README: a stream is complete
    at [DONE], or at the end of the body when there is none)."""
    out = request(quirks.base(quirk), backend)
    assert (out.status, out.error_type, out.error_message) == (SUCCESS, None, None)
    assert len(out.chunk_times) == 2 and out.text == "Hello" and out.finish_reason is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("quirk", "stream", "error_type", "says"),
    [
        (
            "text_plain_200",
            True,
            "not_event_stream",
            ["HTTP 200 text/plain: not an event stream", "retry in"],
        ),
        ("html_200", True, "not_event_stream", ["text/html; charset=utf-8", "<!DOCTYPE html>", PORTAL_TITLE]),
        (
            "empty_200",
            True,
            "empty_response",
            ["text/event-stream", "without a content chunk", "body: (empty)"],
        ),
        ("comments_only", True, "empty_response", ["without a content chunk", "body: : keep-alive"]),
        ("done_only", True, "empty_response", ["without a content chunk", "body: data: [DONE]"]),
        ("role_only", True, "empty_response", ["without a content chunk (finish_reason stop)"]),
        ("nonstream_no_choices", False, "empty_response", ["application/json: response has no choices"]),
        (
            "nonstream_not_json",
            False,
            "protocol_error",
            ["text/html: response body is not JSON", "Bad gateway"],
        ),
    ],
)
def test_a_2xx_without_output_is_an_error_naming_its_body(
    quirks: QuirkServer, backend: str, quirk: str, stream: bool, error_type: str, says: list[str]
) -> None:
    t0 = time.perf_counter()
    out = request(quirks.base(quirk), backend, api_key=API_KEY, stream=stream)
    assert time.perf_counter() - t0 < 2
    assert (out.status, out.error_type, out.http_status) == (ERROR, error_type, 200)
    assert error_type in ERROR_TYPES
    assert out.chunk_times == [] and out.completed_at is not None
    for text in says:
        assert text in out.error_message
    # One short line: the body preview is cut, and cut after the secrets were scrubbed (the portal
    # echoes the API key across the cut).
    assert "\n" not in out.error_message
    assert len(out.error_message.split("; body: ")[1]) <= PREVIEW_CHARS
    assert API_KEY not in out.error_message and "sk-test" not in out.error_message


@pytest.mark.parametrize("backend", BACKENDS)
def test_api_key_echoed_by_the_server_is_redacted(quirks: QuirkServer, backend: str) -> None:
    out = request(quirks.base("echo_auth"), backend, api_key=API_KEY)
    assert (out.status, out.error_type, out.http_status) == (ERROR, "http_error", 401)
    assert "Incorrect API key provided" in out.error_message
    assert API_KEY not in out.error_message and "SECRET" not in out.error_message


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("quirk", ["slow_headers", "stall"])
def test_request_deadline(quirks: QuirkServer, backend: str, quirk: str) -> None:
    t0 = time.perf_counter()
    out = request(quirks.base(quirk), backend, request_timeout=0.3)
    elapsed = time.perf_counter() - t0
    assert (out.status, out.error_type) == (TIMEOUT, "request_timeout")
    assert len(out.chunk_times) == (2 if quirk == "stall" else 0)  # chunks before the deadline stay
    # Timed out at its deadline: not before it (the loop's clock counts whole milliseconds), and long
    # before the server's hang ends. Generous above: on a loaded CI machine the quirk server, in
    # this process, and other test workers compete for the CPU this loop needs to wake up.
    e2e = out.completed_at - out.picked_up_at
    assert 0.29 <= e2e < MAX_HANG_S / 2
    assert e2e < elapsed < MAX_HANG_S


@pytest.mark.parametrize("backend", BACKENDS)
def test_line_over_one_megabyte(quirks: QuirkServer, backend: str) -> None:
    out = request(quirks.base("big_line"), backend)
    assert out.status == SUCCESS and len(out.chunk_times) == 2
    assert out.text == BIG_CONTENT + "!"


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_streaming_is_one_chunk_at_completion(quirks: QuirkServer, backend: str) -> None:
    out = request(quirks.base("nonstream"), backend, stream=False)
    assert out.status == SUCCESS and out.chunk_times == [out.completed_at]
    assert (out.text, out.prompt_tokens, out.completion_tokens, out.finish_reason) == (
        "Hi there",
        5,
        2,
        "length",
    )
    seen = quirks.seen("nonstream")[-1]
    assert b'"stream":false' in seen.body and seen.headers["accept"] == "application/json"


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_answered_with_plain_json(quirks: QuirkServer, backend: str) -> None:
    out = request(quirks.base("stream_as_json"), backend)
    assert out.status == SUCCESS and out.chunk_times == [out.completed_at] and out.text == "Hi there"


@pytest.mark.parametrize("backend", BACKENDS)
def test_completions_stream(quirks: QuirkServer, backend: str) -> None:
    out = request(quirks.base("completions"), backend, type="openai_completions")
    assert out.status == SUCCESS and len(out.chunk_times) == 2 and out.text == "Once upon"
    assert (out.prompt_tokens, out.completion_tokens, out.finish_reason) == (4, 2, "length")
    assert quirks.seen("completions")[-1].path == "/completions/v1/completions"


@pytest.mark.parametrize("backend", BACKENDS)
def test_reasoning_and_tool_calls_are_content_chunks(quirks: QuirkServer, backend: str) -> None:
    out = request(quirks.base("reasoning"), backend)
    # reasoning_content, reasoning, tool_calls, "Answer"; not role-only, empty content, finish-only
    assert out.status == SUCCESS and len(out.chunk_times) == 4
    assert out.text == "Answer" and out.finish_reason == "stop"
    # Both reasoning spellings are reasoning; the tool call and "Answer" are the answer chunks.
    assert out.reasoning_text == "thinkmore" and out.answer_times == out.chunk_times[2:]


@pytest.mark.parametrize("backend", BACKENDS)
def test_usage_on_a_content_chunk(quirks: QuirkServer, backend: str) -> None:
    out = request(quirks.base("usage_inline"), backend)
    assert out.status == SUCCESS and len(out.chunk_times) == 2
    assert (out.prompt_tokens, out.completion_tokens) == (9, 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_connection_refused_is_connect_error(backend: str) -> None:
    out = request(f"http://127.0.0.1:{free_port()}/v1", backend, api_key=API_KEY)
    assert (out.status, out.error_type, out.http_status) == (ERROR, "connect_error", None)
    assert API_KEY not in out.error_message


@pytest.mark.parametrize("backend", BACKENDS)
def test_connect_deadline(backend: str) -> None:
    # A listener whose accept queue is full: Linux drops further SYNs, so connect() hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(listener.getsockname())
            fillers.append(s)
        time.sleep(0.05)
        port = listener.getsockname()[1]
        t0 = time.perf_counter()
        out = request(f"http://127.0.0.1:{port}/v1", backend, connect_timeout=0.3, request_timeout=5)
        assert time.perf_counter() - t0 < 2
        assert (out.status, out.error_type) == (TIMEOUT, "connect_timeout")
    finally:
        for s in fillers:
            s.close()
        listener.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_events_of_one_read_share_one_timestamp(quirks: QuirkServer, backend: str) -> None:
    # The crlf quirk writes "lo" and " world" in one chunk: one read, one perf_counter() call.
    out = request(quirks.base("crlf"), backend)
    assert len(out.chunk_times) == 3 and out.chunk_times[1] == out.chunk_times[2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_non_streamed_answer_the_server_aborted_is_a_failure(quirks: QuirkServer, backend: str) -> None:
    out = request(quirks.base("nonstream_abort"), backend, stream=False)
    assert (out.status, out.error_type, out.text) == (ERROR, "server_error", "Hi th")
    assert "finish_reason 'abort'" in out.error_message


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_key_echoed_across_the_messages_cut_leaves_no_part_of_itself(
    quirks: QuirkServer, backend: str
) -> None:
    """Scrubbed before any cut: a key cut in half first would survive the scrub in part."""
    key = "sk-proj-" + "A1b2C3d4E5" * 15
    out = request(quirks.base("echo_auth_late"), backend, api_key=key)
    assert (out.status, out.error_type) == (ERROR, "http_error")
    assert "sk-proj-A1b2" not in out.error_message and "A1b2C3d4E5" not in out.error_message


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("quirk", "stream", "error_type"),
    [
        ("html_200_key_at_cut", True, "not_event_stream"),  # sniffed, rejected at its first bytes
        ("html_200_key_at_cut", False, "protocol_error"),  # a whole body that is not JSON
        ("sse_key_at_cut", True, "empty_response"),  # the first read of an event stream
    ],
)
def test_a_key_echoed_across_the_body_heads_cut_leaves_no_part_of_itself(
    quirks: QuirkServer, backend: str, quirk: str, stream: bool, error_type: str
) -> None:
    """The body's first bytes are cut before the scrub, and the preview squeezes the whitespace
    before the cut away: the start of a key cut there must not show."""
    key = "sk-live-" + "Q7w8E9r0T1" * 4
    out = request(quirks.base(quirk), backend, api_key=key, stream=stream)
    assert (out.status, out.error_type, out.http_status) == (ERROR, error_type, 200)
    body = out.error_message.split("; body: ")[1]
    assert body.startswith(("<html>", ": <html>")), body
    assert "sk-live" not in out.error_message and "Q7w8" not in out.error_message
    assert "Bearer" not in body  # the start of the `Bearer <key>` secret, too


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_long_key_echoed_across_the_raw_messages_cut_leaves_no_part_of_itself(
    quirks: QuirkServer, backend: str
) -> None:
    """An error's text is cut (openai.RAW_MESSAGE_CHARS) before the scrub: a credential longer than
    that cut (a service account's key) must not show its start."""
    key = "sk-long-" + "Z9y8X7w6V5" * (RAW_MESSAGE_CHARS // 10)
    out = request(quirks.base("echo_auth"), backend, api_key=key)
    assert (out.status, out.error_type, out.http_status) == (ERROR, "http_error", 401)
    assert "Incorrect API key provided" in out.error_message
    assert "sk-long" not in out.error_message and "Z9y8" not in out.error_message


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["on_end", "on_body"])
@pytest.mark.parametrize("quirk", ["close_delimited_cut", "no_done"])  # a close, or the framing, ends it
def test_a_reader_that_raises_is_a_protocol_error_not_a_lost_record(
    quirks: QuirkServer, monkeypatch: pytest.MonkeyPatch, backend: str, method: str, quirk: str
) -> None:
    """A bug in the response reader must cost one request its success, not its record (the session
    task would die) nor a wait for the request deadline."""

    def broken(*args: object, **kwargs: object) -> bool:
        raise RuntimeError("reader bug")

    monkeypatch.setattr(ResponseReader, method, broken)
    t0 = time.perf_counter()
    out = request(quirks.base(quirk), backend, api_key=API_KEY)
    assert time.perf_counter() - t0 < 2
    assert (out.status, out.error_type, out.http_status) == (ERROR, "protocol_error", 200)
    assert "RuntimeError: reader bug" in out.error_message
    assert out.completed_at is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_credentials_in_api_base_go_out_as_basic_auth(quirks: QuirkServer, backend: str) -> None:
    """As httpx sends them (percent-decoded, UTF-8), on both backends. They win over an api_key (which
    OPENAI_API_KEY may give unasked); an Authorization header the user wrote wins over both."""
    user, password = "us@er", "pä ss:w/ord"
    base = quirks.base("basic").replace("://", "://us%40er:p%C3%A4%20ss%3Aw%2Ford@") + f"?creds={backend}"
    assert request(base, backend).status == SUCCESS
    assert request(base + "-key", backend, api_key=API_KEY).status == SUCCESS
    own = {"Authorization": "Bearer own"}
    assert request(base + "-own", backend, api_key=API_KEY, headers=own).status == SUCCESS
    seen = {r.path.rpartition("=")[2]: r.headers.get("authorization") for r in quirks.seen("basic")}
    basic = f"Basic {base64.b64encode(f'{user}:{password}'.encode()).decode()}"
    assert (seen[backend], seen[backend + "-key"], seen[backend + "-own"]) == (basic, basic, "Bearer own")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_token_as_the_api_base_user_is_redacted_in_its_basic_form(
    quirks: QuirkServer, backend: str
) -> None:
    token = "sk-abcdefghijklmnopqrstuv"
    out = request(quirks.base("echo_auth").replace("://", f"://{token}@"), backend)
    assert (out.status, out.http_status) == (ERROR, 401)
    assert "Incorrect API key provided: Basic " in out.error_message
    basic = base64.b64encode(f"{token}:".encode()).decode()
    assert token not in out.error_message and basic not in out.error_message


@pytest.mark.parametrize("backend", BACKENDS)
def test_api_base_credentials_echoed_by_the_server_are_redacted(quirks: QuirkServer, backend: str) -> None:
    password = "hunter2-PASSWORD"
    out = request(quirks.base("echo_auth").replace("://", f"://alice:{password}@"), backend)
    assert (out.status, out.error_type, out.http_status) == (ERROR, "http_error", 401)
    assert "Incorrect API key provided: Basic " in out.error_message
    token = base64.b64encode(f"alice:{password}".encode()).decode()
    assert password not in out.error_message and token not in out.error_message


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("quirk", ["switching_protocols", "switching_protocols_bare"])
def test_a_switch_of_protocols_is_a_protocol_error(quirks: QuirkServer, backend: str, quirk: str) -> None:
    t0 = time.perf_counter()
    out = request(quirks.base(quirk), backend)
    assert time.perf_counter() - t0 < 2
    assert (out.status, out.error_type) == (ERROR, "protocol_error")
    assert "switched protocols" in out.error_message


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("error", sorted(FALSY_ERRORS))
def test_a_falsy_error_field_is_no_error(quirks: QuirkServer, backend: str, stream: bool, error: str) -> None:
    """`"error": ""`, `{}`, `false`, `[]`, `0` on every chunk (or the body) of a good answer: only an
    error field that holds something reports an error (null was already no error)."""
    out = request(quirks.base("falsy_error") + f"?error={error}", backend, stream=stream)
    if stream:
        assert_standard(out)
    else:
        assert (out.status, out.error_type, out.text) == (SUCCESS, None, "Hi there")
