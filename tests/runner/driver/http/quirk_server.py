"""A misbehaving OpenAI-style server for client tests: real HTTP/1.1 over a loopback socket.

It runs in a thread with its own event loop. The first path segment picks the quirk, so each quirk has
its own api_base: `server.base("drop")` == "http://127.0.0.1:PORT/drop/v1". Every request is recorded
(quirk, connection number, headers, body) so tests can check keep-alive reuse and what was sent.
Responses are written byte-exactly (framing, splits, delays, resets) by the handlers below.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

MAX_HANG_S = 5.0  # slow handlers never sleep longer than this (tests use much shorter deadlines)
_MISSING = object()


@dataclass
class Seen:
    quirk: str
    conn: int
    path: str
    headers: dict[str, str]
    body: bytes


# -- response building blocks -------------------------------------------------------------------------


def event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def chat(
    content: object = _MISSING,
    *,
    role: str | None = None,
    finish: str | None = None,
    usage: object = _MISSING,
    **delta_extra: object,
) -> bytes:
    delta: dict = {}
    if role:
        delta["role"] = role
    if content is not _MISSING:
        delta["content"] = content
    delta.update(delta_extra)
    obj: dict = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not _MISSING:
        obj["usage"] = usage
    return event(obj)


def usage_event(prompt: int, completion: int) -> bytes:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    return event({"id": "chatcmpl-1", "choices": [], "usage": usage})


# The reference stream: role-only first chunk (content null), chunks with no usage key and with
# usage: null, a finish chunk, a final usage chunk with choices: [], then [DONE].
# Expect 3 content chunks, "Hello world", usage 7/3, finish_reason "stop".
STANDARD = [
    chat(None, role="assistant"),
    chat("Hel", usage=None),
    chat("lo"),
    chat(" world"),
    chat(finish="stop", usage=None),
    usage_event(7, 3),
    DONE,
]


def head(
    status: int = 200,
    ctype: str | None = "text/event-stream",
    *,
    length: int | None = None,
    chunked: bool = True,
    close: bool = False,
) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 500: "Internal Server Error"}
    lines = [f"HTTP/1.1 {status} {reason.get(status, 'X')}"]
    if ctype:
        lines.append(f"Content-Type: {ctype}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    elif chunked:
        lines.append("Transfer-Encoding: chunked")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


END = b"0\r\n\r\n"


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def send(w: asyncio.StreamWriter, *parts: bytes, gap: float = 0.002) -> None:
    """Write each part separately with a pause, so the client sees separate reads."""
    for i, part in enumerate(parts):
        if i:
            await asyncio.sleep(gap)
        w.write(part)
        await w.drain()


def reset(w: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


def json_response(status: int, obj: object, ctype: str = "application/json") -> bytes:
    body = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return head(status, ctype, length=len(body)) + body


# -- quirks: each returns True to keep the connection open for another request ----------------------

Handler = Callable[[asyncio.StreamWriter, Seen, "QuirkServer"], Awaitable[bool]]
QUIRKS: dict[str, Handler] = {}


def quirk(fn: Handler) -> Handler:
    QUIRKS[fn.__name__.removeprefix("q_")] = fn
    return fn


@quirk
async def q_basic(w, req, srv):
    """Each event its own read; [DONE] and the end of the body in the last one."""
    await send(w, head(), *(chunk(e) for e in STANDARD[:-1]), chunk(DONE) + END)
    return True


@quirk
async def q_split(w, req, srv):
    """Chunked encoding with chunk boundaries inside events, written in reads split mid-framing."""
    framed = b"".join(chunk(p) for p in pieces(b"".join(STANDARD), 7)) + END
    await send(w, head())
    await send(w, *pieces(framed, 13), gap=0.0005)
    return True


@quirk
async def q_crlf(w, req, srv):
    """\\r\\n line endings, `:` keep-alive comments, `data:` without a space, several events per read."""
    events = [e.replace(b"\n", b"\r\n") for e in STANDARD]
    events[2] = events[2].replace(b"data: ", b"data:")
    batch1 = b": keep-alive\r\n\r\n" + events[0] + events[1]
    batch2 = events[2] + b":ping\r\n\r\n" + events[3] + events[4]
    await send(w, head(), chunk(batch1), chunk(batch2), chunk(events[5] + events[6]) + END)
    return True


@quirk
async def q_no_done(w, req, srv):
    await send(w, head(), *(chunk(e) for e in STANDARD[:-1]), END)
    return True


@quirk
async def q_content_length(w, req, srv):
    body = b"".join(STANDARD)
    half = len(body) // 2
    await send(w, head(length=len(body)) + body[:half], body[half:])
    return True


@quirk
async def q_close_delimited(w, req, srv):
    await send(w, head(chunked=False, close=True), *STANDARD[:-1])
    return False


@quirk
async def q_no_content_type(w, req, srv):
    await send(w, head(ctype=None), *(chunk(e) for e in STANDARD), END)
    return True


@quirk
async def q_informational(w, req, srv):
    await send(w, b"HTTP/1.1 100 Continue\r\n\r\n", head(), *(chunk(e) for e in STANDARD), END)
    return True


@quirk
async def q_json_error_200(w, req, srv):
    err = {"error": {"message": "model is overloaded", "type": "server_error", "code": 503}}
    await send(w, json_response(200, err))
    return True


@quirk
async def q_http_400(w, req, srv):
    err = {"object": "error", "message": "max_tokens is too large", "type": "BadRequestError"}
    await send(w, json_response(400, err))
    return True


@quirk
async def q_http_500_text(w, req, srv):
    await send(w, json_response(500, b"Internal Server Error\nTraceback: ...", "text/plain"))
    return True


@quirk
async def q_echo_auth(w, req, srv):
    """401 whose message echoes the credentials it got (some gateways do this)."""
    auth = req.headers.get("authorization", "")
    err = {"error": {"message": f"Incorrect API key provided: {auth}", "type": "invalid_request"}}
    await send(w, json_response(401, err))
    return True


@quirk
async def q_midstream_error(w, req, srv):
    err = {"error": {"message": "engine died", "type": "internal_error"}}
    await send(w, head(), chunk(STANDARD[1]), chunk(STANDARD[2]), chunk(event(err)))
    await asyncio.sleep(MAX_HANG_S)  # the client must not wait for the body to end
    return False


@quirk
async def q_error_event(w, req, srv):
    err = b'event: error\ndata: {"message": "out of memory"}\n\n'
    await send(w, head(), chunk(STANDARD[1]), chunk(err))
    await asyncio.sleep(MAX_HANG_S)
    return False


@quirk
async def q_drop(w, req, srv):
    await send(w, head(), chunk(STANDARD[0]), chunk(STANDARD[1]), chunk(STANDARD[2]))
    await asyncio.sleep(0.01)
    w.close()
    return False


@quirk
async def q_reset(w, req, srv):
    await send(w, head(), chunk(STANDARD[1]))
    await asyncio.sleep(0.01)
    reset(w)
    return False


@quirk
async def q_reset_before(w, req, srv):
    reset(w)
    return False


BIG_CONTENT = "x" * 1_500_000


@quirk
async def q_big_line(w, req, srv):
    body = chat(BIG_CONTENT) + chat("!") + DONE
    await send(w, head(length=len(body)), *pieces(body, 65536), gap=0.0005)
    return True


@quirk
async def q_slow_headers(w, req, srv):
    await asyncio.sleep(MAX_HANG_S)
    return False


@quirk
async def q_stall(w, req, srv):
    await send(w, head(), chunk(STANDARD[1]), chunk(STANDARD[2]))
    await asyncio.sleep(MAX_HANG_S)
    return False


@quirk
async def q_nonstream(w, req, srv):
    obj = {
        "id": "chatcmpl-2",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
    await send(w, json_response(200, obj))
    return True


@quirk
async def q_stream_as_json(w, req, srv):
    """Asked to stream, the server answers with one JSON completion anyway."""
    return await q_nonstream(w, req, srv)


@quirk
async def q_completions(w, req, srv):
    def text(t: str, finish: str | None = None) -> bytes:
        return event({"choices": [{"index": 0, "text": t, "finish_reason": finish}]})

    events = [text("Once"), text(" upon"), text("", "length"), usage_event(4, 2), DONE]
    await send(w, head(), *(chunk(e) for e in events), END)
    return True


@quirk
async def q_reasoning(w, req, srv):
    call = [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}]
    events = [
        chat(None, role="assistant"),
        chat(None, reasoning_content="think"),
        chat(reasoning="more"),
        chat(None, tool_calls=call),
        chat(""),  # empty content: not a content chunk
        chat("Answer"),
        chat(finish="stop"),
        DONE,
    ]
    await send(w, head(), *(chunk(e) for e in events), END)
    return True


@quirk
async def q_usage_inline(w, req, srv):
    usage = {"prompt_tokens": 9, "completion_tokens": 2}
    events = [chat("A"), chat("B", finish="stop", usage=usage), DONE]
    await send(w, head(), *(chunk(e) for e in events), END)
    return True


@quirk
async def q_done_then_linger(w, req, srv):
    """[DONE] arrives, the chunked terminator only 150 ms later (a slow end of body)."""
    await send(w, head(), *(chunk(e) for e in STANDARD))
    await asyncio.sleep(0.15)
    await send(w, END)
    return True


@quirk
async def q_stale(w, req, srv):
    """Answers the first request on a connection; closes on the second (a keep-alive race)."""
    n = srv.per_conn_count(req.conn)
    if n > 1:
        w.close()
        return False
    return await q_basic(w, req, srv)


@quirk
async def q_held_then_dropped(w, req, srv):
    """Answers the first request on a connection; reads the second, works on it, then drops it (a
    crashed worker, a proxy's timeout): the server had the request, so it must not be sent again."""
    if srv.per_conn_count(req.conn) > 1:
        await asyncio.sleep(0.6)
        w.close()
        return False
    return await q_basic(w, req, srv)


# -- generations the server cut off, and errors in odd forms: each is a failure --------------------


@quirk
async def q_abort_finish(w, req, srv):
    """vLLM ends an aborted request with finish_reason "abort" after what it had produced."""
    await send(
        w, head(), chunk(chat("Hel")), chunk(chat("lo")), chunk(chat(finish="abort")), chunk(DONE) + END
    )
    return True


@quirk
async def q_error_finish(w, req, srv):
    await send(w, head(), chunk(chat("Hel")), chunk(chat(finish="error")), chunk(DONE) + END)
    return True


@quirk
async def q_error_event_string(w, req, srv):
    error = b'event: error\ndata: "model overloaded"\n\n'
    await send(w, head(), chunk(chat("Hel")), chunk(error), chunk(DONE) + END)
    return True


@quirk
async def q_error_event_null(w, req, srv):
    await send(w, head(), chunk(chat("Hel")), chunk(b"event: error\ndata: null\n\n"), chunk(DONE) + END)
    return True


@quirk
async def q_error_event_not_utf8(w, req, srv):
    """Close-delimited, the last event unterminated: it is parsed as the connection closes."""
    await send(w, head(chunked=False, close=True), chat("Hel"), b"event: error\ndata: \xff\xfe oops")
    return False


@quirk
async def q_reset_close_delimited(w, req, srv):
    """No framing: only a clean close ends the body; a reset cuts it short."""
    await send(w, head(chunked=False), chat("Hel"))
    await asyncio.sleep(0.05)
    reset(w)
    return False


@quirk
async def q_json_error_as_event_stream(w, req, srv):
    body = orjson.dumps({"error": {"message": "model is overloaded", "type": "server_error"}})
    await send(w, head(length=len(body)) + body)
    return True


@quirk
async def q_nonstream_abort(w, req, srv):
    choice = {"index": 0, "message": {"role": "assistant", "content": "Hi th"}, "finish_reason": "abort"}
    await send(w, json_response(200, {"id": "chatcmpl-3", "object": "chat.completion", "choices": [choice]}))
    return True


@quirk
async def q_echo_auth_late(w, req, srv):
    """401 echoing the credentials after 120 characters: across the message's cut at 300."""
    auth = req.headers.get("authorization", "")
    err = {
        "error": {"message": "x" * 120 + f" Incorrect API key provided: {auth}", "type": "invalid_request"}
    }
    await send(w, json_response(401, err))
    return True


# -- event streams that end without [DONE] and without a finish_reason ------------------------------


@quirk
async def q_close_delimited_cut(w, req, srv):
    """Close-delimited, and the server gone after two tokens (a crash: the kernel closes its socket
    with a FIN, as cleanly as a server ending the body on purpose)."""
    await send(w, head(chunked=False, close=True), *STANDARD[:3])
    return False


@quirk
async def q_close_delimited_cut_before_content(w, req, srv):
    await send(w, head(chunked=False, close=True), STANDARD[0])
    return False


@quirk
async def q_chunked_no_done_no_finish(w, req, srv):
    """Framed: the chunked terminator ends the body on purpose, without [DONE] or a finish_reason."""
    await send(w, head(), chunk(STANDARD[1]), chunk(STANDARD[2]), END)
    return True


@quirk
async def q_content_length_no_done_no_finish(w, req, srv):
    body = STANDARD[1] + STANDARD[2]
    await send(w, head(length=len(body)) + body)
    return True


# -- 2xx answers that are no success: each must be an error naming its body -------------------------

PORTAL_TITLE = "Guest Wi-Fi: please sign in"


@quirk
async def q_text_plain_200(w, req, srv):
    await send(w, json_response(200, b"Service starting, please retry in a minute.\n", "text/plain"))
    return True


@quirk
async def q_html_200(w, req, srv):
    """A captive portal's login page; it echoes the credentials it got near the top, and it is long."""
    auth = req.headers.get("authorization", "")
    page = f"<!DOCTYPE html>\n<html><head><title>{PORTAL_TITLE}</title></head>\n<body>{auth}\n"
    page += "<p>" + "Terms of use. " * 200 + "</p></body></html>\n"
    await send(w, json_response(200, page.encode(), "text/html; charset=utf-8"))
    return True


@quirk
async def q_empty_200(w, req, srv):
    await send(w, head(length=0))
    return True


@quirk
async def q_comments_only(w, req, srv):
    """A valid event stream without a single data event: keep-alives and a named event only."""
    await send(w, head(), chunk(b": keep-alive\n\n"), chunk(b"event: ping\n\n: bye\n\n"), END)
    return True


@quirk
async def q_done_only(w, req, srv):
    await send(w, head(), chunk(DONE), END)
    return True


@quirk
async def q_role_only(w, req, srv):
    """Role, finish and usage events, but no content chunk."""
    events = [chat(None, role="assistant"), chat(finish="stop"), usage_event(7, 0), DONE]
    await send(w, head(), *(chunk(e) for e in events), END)
    return True


@quirk
async def q_sse_as_text_plain(w, req, srv):
    """A proxy rewrote the content type: the body is still the reference stream."""
    await send(w, head(ctype="text/plain"), *(chunk(e) for e in STANDARD), END)
    return True


@quirk
async def q_nonstream_no_choices(w, req, srv):
    await send(w, json_response(200, {"id": "chatcmpl-3", "object": "chat.completion", "choices": []}))
    return True


@quirk
async def q_nonstream_not_json(w, req, srv):
    await send(w, json_response(200, b"<html><body>Bad gateway, try again</body></html>", "text/html"))
    return True


# Whitespace before an echoed credential: the raw cut of the body's first bytes (openai.BODY_HEAD_BYTES)
# falls inside the credential, and the preview, whitespace squeezed, shows what comes before the cut.
KEY_AT_CUT_PAD = 1000


@quirk
async def q_html_200_key_at_cut(w, req, srv):
    """A 200 page echoing the credentials after a thousand newlines, then more text."""
    auth = req.headers.get("authorization", "")
    page = "<html>" + "\n" * KEY_AT_CUT_PAD + auth + "\n</html>\n" + "x" * 2000
    await send(w, json_response(200, page.encode(), "text/html"))
    return True


@quirk
async def q_sse_key_at_cut(w, req, srv):
    """An event stream of comments only, the credentials in one after a thousand blank lines."""
    auth = req.headers.get("authorization", "")
    body = (": <html>" + "\n" * KEY_AT_CUT_PAD + f": {auth}\n\n" + ": " + "x" * 2000 + "\n\n").encode()
    await send(w, head(), chunk(body), END)
    return True


# -- llama.cpp's llama-server: a streaming error sent as an `error:` field, not `data:` -------------

LLAMA_ERROR = b'error: {"code":500,"message":"decode failed","type":"server_error"}\n\n'


@quirk
async def q_llama_error_field(w, req, srv):
    await send(w, head(), chunk(chat("Hel")), chunk(LLAMA_ERROR), chunk(DONE) + END)
    return True


@quirk
async def q_llama_error_field_first(w, req, srv):
    await send(w, head(), chunk(LLAMA_ERROR), chunk(DONE) + END)
    return True


# -- answers the response reader cannot take the usual way --------------------------------------------

DEEP = 300  # deeper than orjson writes (254); it reads 1024
DEEPER = 1000  # deeper than msgspec reads too (Python's recursion limit)


@quirk
async def q_deep_error_500(w, req, srv):
    """A 500 without framing whose error object holds a list nested DEEP levels, then the close."""
    body = b'{"error":{"code":500,"details":' + b"[" * DEEP + b"]" * DEEP + b"}}"
    await send(w, head(500, "application/json", chunked=False, close=True) + body)
    return False


@quirk
async def q_deep_error_event(w, req, srv):
    """An event stream whose error event holds a list nested DEEPER levels."""
    err = b'data: {"error":{"code":500,"details":' + b"[" * DEEPER + b"]" * DEEPER + b"}}\n\n"
    await send(w, head(), chunk(chat("Hel")), chunk(err), chunk(DONE) + END)
    return True


@quirk
async def q_switching_protocols(w, req, srv):
    await send(w, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    await asyncio.sleep(MAX_HANG_S)  # the client must not wait for anything after it
    return False


@quirk
async def q_switching_protocols_bare(w, req, srv):
    """A 101 without the Upgrade header that should come with it."""
    await send(w, b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    await asyncio.sleep(MAX_HANG_S)  # the client must not wait for anything after it
    return False


FALSY_ERRORS = {"empty_string": "", "empty_object": {}, "false": False, "empty_list": [], "zero": 0}


@quirk
async def q_falsy_error(w, req, srv):
    """A good answer whose every chunk (or body) carries an `error` key holding a falsy JSON value,
    the one FALSY_ERRORS names in the query (`?error=empty_object`)."""
    error = FALSY_ERRORS[req.path.partition("error=")[2]]
    if not orjson.loads(req.body)["stream"]:
        message = {"role": "assistant", "content": "Hi there"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        await send(w, json_response(200, {"object": "chat.completion", "choices": [choice], "error": error}))
        return True
    with_error = b'{"error":%b,"id"' % orjson.dumps(error)
    await send(w, head(), *(chunk(e.replace(b'{"id"', with_error, 1)) for e in STANDARD), END)
    return True


@quirk
async def q_dropped_at_once(w, req, srv):
    """Closes a new connection as soon as its first request is read, without a response."""
    w.close()
    return False


# -- the server ---------------------------------------------------------------------------------------


class QuirkServer:
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.requests: list[Seen] = []
        self.port = 0
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="quirk-server", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> QuirkServer:
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("quirk server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(MAX_HANG_S + 2)

    def base(self, name: str) -> str:
        if self.ssl_context is not None:
            return f"https://localhost:{self.port}/{name}/v1"
        return f"http://127.0.0.1:{self.port}/{name}/v1"

    def seen(self, name: str) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.quirk == name]

    def connections(self, name: str) -> set[int]:
        return {r.conn for r in self.seen(name)}

    def per_conn_count(self, conn: int) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.conn == conn)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop_event.wait()
        self._server.close()
        for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
            task.cancel()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conn = next(self._ids)
        try:
            while True:
                req = await self._read_request(r, conn)
                if req is None:
                    break
                with self._lock:
                    self.requests.append(req)
                handler = QUIRKS.get(req.quirk)
                if handler is None:
                    w.write(json_response(404, {"error": f"no quirk {req.quirk}"}))
                    await w.drain()
                    continue
                if not await handler(w, req, self):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            if not w.is_closing():
                w.close()

    @staticmethod
    async def _read_request(r: asyncio.StreamReader, conn: int) -> Seen | None:
        try:
            raw = await r.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = raw.decode("latin-1").split("\r\n")
        _method, path, _version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await r.readexactly(int(headers.get("content-length", "0")))
        return Seen(path.split("/")[1], conn, path, headers, body)
