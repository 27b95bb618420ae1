"""OpenAI-compatible request bodies and response interpretation (chat completions and completions).

`RequestBuilder` turns (payload, max_tokens) into body bytes with a fixed key order, so the same inputs
give byte-identical bodies. `ResponseReader` consumes one HTTP response, from either backend, and fills
an Outcome: content-chunk arrival times, text, usage counts, finish_reason, or a failure. It is the
`ResponseHandler` of transport.py and never raises: failures land in `.failure` (a RequestError).

Content chunk (metrics.md): an event with non-empty delta.content, delta.reasoning_content /
delta.reasoning, delta.tool_calls, or choices[].text. Role-only, empty, usage-only and keep-alive events
are not content chunks. A non-streaming response is one chunk at completion. An answer chunk is a
content chunk with answer output (delta.content, delta.tool_calls or choices[].text): reasoning-only
chunks are output but not answer, which is what ttfa and tpot_answer tell apart.

What a 2xx must carry to be a success (metrics.md): a stream, at least one content chunk, and
`[DONE]` or a finish_reason when a connection close ended it (else `connection_dropped`); a
non-streamed answer, a JSON body with choices. Anything else is an error naming the content type and
the first bytes of the body: `not_event_stream` (an HTML login page, a plain-text notice) or
`empty_response` (an empty body, comments or `[DONE]` only, no choices). How a body is read: by its
content type (event-stream or JSON), else (none, or another type) by its first bytes.
"""

from __future__ import annotations

from typing import Any

import orjson
from veeksha.runner.driver.http.chunks import Choice, Chunk, DecodeError, Delta, as_chunk, decode_chunk
from veeksha.runner.driver.http.errors import (
    ConnectionDropped,
    EmptyResponse,
    HTTPStatusError,
    NotEventStream,
    ProtocolError,
    RequestError,
    ServerError,
)
from veeksha.runner.driver.http.outcome import Outcome
from veeksha.runner.driver.http.sse import SSEError, SSEParser
from veeksha.shared.config import ClientConfig

CHAT = "openai_chat_completions"
COMPLETIONS = "openai_completions"
ENDPOINTS = {CHAT: "/chat/completions", COMPLETIONS: "/completions"}
DEFAULT_MAX_TOKENS_PARAM = {CHAT: "max_completion_tokens", COMPLETIONS: "max_tokens"}

MAX_BODY_BYTES = 64 * 1024 * 1024  # a buffered (non-streamed) body larger than this is refused
MAX_MESSAGE_CHARS = 300  # error messages are one line, cut to this length (by the client, last)
# Text taken from a response for a message is kept this long until the client has scrubbed its
# secrets and cut it to MAX_MESSAGE_CHARS: a key cut in half here would survive that scrub.
RAW_MESSAGE_CHARS = 4096
CUT_MARK = "..."  # ends a text one_line cut (the client drops a secret's start left before it)
# A generation these end was cut off (vLLM's abort, a server's own error): whatever came is no answer.
FAILED_FINISH_REASONS = frozenset({"abort", "error"})
PREVIEW_CHARS = 100  # the body preview in an error message
# Raw body bytes kept for that preview: more than it shows, so that the client can scrub a secret
# crossing the cut before shortening.
BODY_HEAD_BYTES = 1024

# How the body is being read. _SSE_FIRST: an event stream before its first read (which is kept for
# error messages); _SNIFF: not known yet, the first bytes decide; _REJECT: not an event stream, only
# its first bytes are still collected for the error message.
_SSE, _JSON, _ERROR, _SNIFF, _SSE_FIRST, _REJECT = range(6)
# What one streamed event carries, ordered: a chunk with any answer output is an answer chunk.
_NONE, _REASONING, _ANSWER = range(3)
# How an event stream can start (after blank lines).
_SSE_STARTS = (b"data:", b"event:", b"id:", b"retry:", b":")


class RequestBuilder:
    """Body bytes for one endpoint type; everything constant is decided once."""

    __slots__ = (
        "_extra",
        "_fixed",
        "_max_param",
        "_min_param",
        "_model",
        "_payload_key",
        "chat",
        "path",
    )

    def __init__(self, cfg: ClientConfig) -> None:
        kind = cfg.type
        if kind not in ENDPOINTS:
            raise ValueError(f"unknown client type {kind!r}")
        self.chat = kind == CHAT
        self.path = ENDPOINTS[kind]
        self._payload_key = "messages" if self.chat else "prompt"
        self._max_param = cfg.max_tokens_param or DEFAULT_MAX_TOKENS_PARAM[kind]
        self._min_param = cfg.min_tokens_param
        fixed: dict[str, Any] = {}
        if cfg.ignore_eos:  # sent only when true (config.md): strict OpenAI endpoints refuse it
            fixed["ignore_eos"] = True
        fixed["stream"] = cfg.stream
        if cfg.stream and cfg.include_usage:
            fixed["stream_options"] = {"include_usage": True}
        self._fixed = fixed
        self._extra = dict(cfg.additional_sampling_params)  # a JSON string was parsed by the schema
        self._model = cfg.model

    def body(self, payload: list[dict[str, Any]] | str, max_tokens: int) -> bytes:
        if self.chat and isinstance(payload, str):
            payload = [{"role": "user", "content": payload}]
        elif not self.chat and not isinstance(payload, str):
            raise TypeError("openai_completions takes a prompt string, not a message list")
        body: dict[str, Any] = {"model": self._model, self._payload_key: payload}
        body[self._max_param] = max_tokens
        if self._min_param:
            body[self._min_param] = max_tokens
        body.update(self._fixed)
        if self._extra:
            body.update(self._extra)  # user parameters are merged last and win
        return orjson.dumps(body)


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - len(CUT_MARK)] + CUT_MARK


def error_text(err: Any) -> str:
    """The human part of an OpenAI-style error object ({"error": {"message": ...}} and variants).
    A loop, not a recursion: a server's error may nest deeper than Python's recursion limit."""
    while True:
        if isinstance(err, dict):
            for key in ("message", "detail", "error", "msg"):
                if err.get(key):
                    err = err[key]
                    break
            else:
                return one_line(_json_text(err), RAW_MESSAGE_CHARS)
        elif isinstance(err, list) and err:
            err = err[0]
        else:
            return one_line(str(err), RAW_MESSAGE_CHARS)


def _json_text(obj: dict[str, Any]) -> str:
    try:
        return orjson.dumps(obj).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (254 levels; it reads 1024)
        return "(an error object nested too deeply to show)"


def preview(text: str) -> str:
    """The start of a body for an error message: one line, at most PREVIEW_CHARS."""
    return one_line(text, PREVIEW_CHARS) or "(empty)"


def sniff(head: bytes) -> int | None:
    """_JSON, _SSE or _REJECT from a body's first bytes; None while they cannot tell yet."""
    head = head.lstrip()
    if not head:
        return None
    if head[:1] in (b"{", b"["):
        return _JSON
    if head.startswith(_SSE_STARTS):
        return _SSE
    if any(start.startswith(head) for start in _SSE_STARTS):
        return None  # b"da": the next bytes decide
    return _REJECT


def error_of(obj: dict[str, Any]) -> str | None:
    """The message of an OpenAI-style error object (`{"error": ...}`, or `"object": "error"`), else
    None: the one rule for a body, an event or a streamed body that is an error."""
    err = obj.get("error")
    if err:  # `"error": ""`, `{}`, `false` ride along on some servers' good answers
        return error_text(err)
    return error_text(obj) if obj.get("object") == "error" else None


def _error_body(head: bytes) -> str | None:
    """The error a body that is one JSON error object holds, else None."""
    try:
        obj = orjson.loads(head)
    except orjson.JSONDecodeError:
        return None
    return error_of(obj) if type(obj) is dict else None


def body_error_text(body: bytes) -> str:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return one_line(body.decode("utf-8", "replace"), RAW_MESSAGE_CHARS) or "(empty body)"
    return error_text(obj) if obj else "(empty body)"


class ResponseReader:
    """Interprets one response into an Outcome (see module doc). One instance per request."""

    __slots__ = (
        "_body",
        "_body_len",
        "_ctype",
        "_head",
        "_mode",
        "_now",
        "_reasoning",
        "_sse",
        "_status",
        "_text",
        "failure",
        "finished",
        "out",
        "stream",
    )

    def __init__(self, out: Outcome, stream: bool) -> None:
        self.out = out
        self.stream = stream
        self.failure: RequestError | None = None
        self.finished = False
        self._mode = _JSON
        self._sse: SSEParser | None = None
        self._body: list[bytes] = []
        self._body_len = 0
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._now = 0.0
        self._status = 0
        self._ctype: bytes | None = None
        self._head = b""  # the first bytes of the body, for error messages

    # -- ResponseHandler -----------------------------------------------------------------------------

    def on_start(self, status: int, content_type: bytes | str | None) -> None:
        self.out.http_status = self._status = status
        if isinstance(content_type, str):
            content_type = content_type.encode("latin-1", "replace")
        self._ctype = content_type
        ctype = (content_type or b"").lower()
        if not 200 <= status < 300:
            self._mode = _ERROR
        elif not self.stream or b"json" in ctype:
            self._mode = _JSON
        elif b"event-stream" in ctype:
            self._start_sse()
            self._mode = _SSE_FIRST
        else:
            self._mode = _SNIFF  # no useful content-type: the first body bytes decide

    def on_body(self, data: bytes, now: float) -> bool:
        mode = self._mode
        if mode == _SSE:
            self._now = now
            try:
                self._sse.feed(data)  # type: ignore[union-attr]  # made by _start_sse() in SSE mode; hot path: no check
            except SSEError as exc:
                self._fail(ProtocolError(str(exc)), now)
            return self.finished
        if mode == _SSE_FIRST:
            self._head = data[:BODY_HEAD_BYTES]
            self._mode = _SSE
            return self.on_body(data, now)
        if mode == _SNIFF or mode == _REJECT:
            return self._sniff(data, now)
        self._buffer(data, now)
        return self.finished

    def on_end(self, now: float, closed: bool = False) -> None:
        """The body ended at `now`: by its framing, or (`closed`) by the server closing the
        connection, the only end a body without Content-Length or chunked encoding has."""
        if self.finished:
            return
        mode = self._mode
        if mode == _SSE or mode == _SSE_FIRST:
            self._now = now
            try:
                self._sse.flush()  # type: ignore[union-attr]  # made by _start_sse() in SSE mode
            except SSEError as exc:
                self._fail(ProtocolError(str(exc)), now)
            if not self.finished:  # no [DONE]: the end of the body ends the stream
                self._end_stream(now, closed)
            return
        body = b"".join(self._body)
        self._body.clear()
        if mode == _ERROR:
            msg = f"HTTP {self._status}: {body_error_text(body)}"
            self._fail(HTTPStatusError(msg, self._status), now)
        elif mode == _REJECT or (mode == _SNIFF and body and not body.isspace()):
            self._reject(body, now)
        elif mode == _SNIFF:
            self._fail(EmptyResponse(self._about("empty body"), body_head=body), now)
        else:
            self._read_json(body, now)

    def finalize(self) -> None:
        """Write the accumulated text into the Outcome (also after failures: partial text is kept)."""
        if self._text:
            self.out.text = "".join(self._text)
        if self._reasoning:
            self.out.reasoning_text = "".join(self._reasoning)
        # The SSE parser calls back into this reader (a reference cycle): without the cycle, the
        # reader and its Outcome are freed as soon as the caller drops them, not by a rare collection.
        self._sse = None

    # -- streaming -----------------------------------------------------------------------------------

    def _start_sse(self) -> None:
        self._mode = _SSE
        self._sse = SSEParser(self._on_event)

    def _end_stream(self, now: float, closed: bool = False) -> None:
        """[DONE] or the end of the body: a stream without a content chunk, or one whose generation
        was cut off, is no success. Nor is one a connection close ended (`closed`) with neither
        [DONE] nor a finish_reason: a crashed server's sockets close as cleanly as a finished body."""
        reason = self.out.finish_reason
        cut_short = closed and not reason
        if (cut := self._cut_off()) is not None:
            self._fail(cut, now)
        elif self.out.chunk_times and not cut_short:
            self._finish(now)
        elif (err := _error_body(self._head)) is not None:  # a bare JSON error sent as an event stream
            self._fail(ServerError(f"server returned an error: {err}"), now)
        elif cut_short:
            what = "the server closed the connection before the stream ended (no [DONE], no finish_reason)"
            self._fail(ConnectionDropped(what), now)
        else:
            what = "the stream ended without a content chunk" + (
                f" (finish_reason {reason})" if reason else ""
            )
            self._fail(EmptyResponse(self._about(what), body_head=self._head), now)

    def _on_event(self, event: bytes | None, data: bytes) -> None:
        # The hot path: once per streamed event, so the ordinary case takes the fewest steps.
        if self.finished:
            return
        if data == b"[DONE]":
            self._end_stream(self._now)
            return
        if event is None:
            try:
                chunk = decode_chunk(data)
            except (DecodeError, RecursionError):  # not JSON, not shaped like a chunk, or too deep
                pass
            else:
                if not chunk.error and chunk.object != "error":
                    self._chunk(chunk)
                    return
        self._unusual_event(event, data)

    def _chunk(self, chunk: Chunk) -> None:
        choices = chunk.choices
        if choices:
            output = self._choices(choices)
            if output:
                now = self._now
                self.out.chunk_times.append(now)
                if output == _ANSWER:
                    self.out.answer_times.append(now)
        usage = chunk.usage
        if usage:
            self._usage(usage)

    def _choices(self, choices: list[Choice]) -> int:
        """The most one event's choices carry (nothing, reasoning only, or answer); their text goes to
        the answer or the reasoning. The common event, answer text alone, takes no further call."""
        output = _NONE
        for choice in choices:
            delta = choice.delta  # chat; completions carry `text`, always answer
            c = delta.content if delta is not None else choice.text
            if c:
                got = _ANSWER
                if type(c) is str:
                    self._text.append(c)
                if delta is not None and (delta.reasoning_content or delta.reasoning):
                    self._reasoning_of(delta)
            else:
                got = self._without_content(delta) if delta is not None else _NONE
            if got > output:
                output = got
            reason = choice.finish_reason
            if reason:
                self.out.finish_reason = reason
        return output

    def _reasoning_of(self, delta: Delta) -> bool:
        """Keep a delta's reasoning text; True if it has any. Both spellings count: vLLM renamed
        reasoning_content to reasoning, and a client reading only one of them reads nothing."""
        r = delta.reasoning_content or delta.reasoning
        if r and type(r) is str:
            self._reasoning.append(r)
        return bool(r)

    def _without_content(self, delta: Delta) -> int:
        """A chat delta without answer text: a tool call (answer output too), reasoning, or nothing."""
        reasoning = self._reasoning_of(delta)
        if delta.tool_calls:
            return _ANSWER
        return _REASONING if reasoning else _NONE

    def _unusual_event(self, event: bytes | None, data: bytes) -> None:
        """Named events, events that may carry an error, and events of another shape: the careful path."""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            if event == b"error":
                text = one_line(data.decode("utf-8", "replace"), RAW_MESSAGE_CHARS)
                self._fail(ServerError(f"server error event: {text}"), self._now)
            else:
                self._bad_event(data)
            return
        if type(obj) is not dict:
            if event == b"error":  # `data: "model overloaded"`, `data: null`: an error all the same
                self._fail(ServerError(f"server error event: {error_text(obj) or 'null'}"), self._now)
            return
        what = error_of(obj)
        if what is not None or event == b"error":
            what = error_text(obj) if what is None else what
            self._fail(ServerError(f"server error in stream: {what}"), self._now)
            return
        try:
            chunk = as_chunk(obj)
        except DecodeError:  # a choice or delta that is not an object
            self._odd_shape(data)
            return
        self._chunk(chunk)

    def _odd_shape(self, data: bytes) -> None:
        self._fail(
            ProtocolError("stream event of an unexpected shape", body_head=data[:BODY_HEAD_BYTES]), self._now
        )

    def _bad_event(self, data: bytes) -> None:
        if not data.strip():
            return  # an empty `data:` keep-alive
        self._fail(ProtocolError("stream event is not JSON", body_head=data[:BODY_HEAD_BYTES]), self._now)

    # -- bodies of unknown kind ----------------------------------------------------------------------

    def _sniff(self, data: bytes, now: float) -> bool:
        """Collect the first bytes until they tell an event stream, JSON, or neither (rejected)."""
        self._buffer(data, now)
        if self.finished:
            return True
        head = b"".join(self._body)
        if self._mode == _SNIFF:
            kind = sniff(head)
            if kind is None:
                if head.isspace():
                    self._body.clear()  # blank lines only so far: nothing worth keeping
                return False
            if kind == _JSON:
                self._mode = _JSON
                return False
            if kind == _SSE:
                self._body.clear()
                self._head = head[:BODY_HEAD_BYTES]
                self._start_sse()
                return self.on_body(head, now)
            self._mode = _REJECT
        if len(head) >= BODY_HEAD_BYTES:  # enough for the message: do not wait for the rest
            self._reject(head, now)
        return self.finished

    def _reject(self, body: bytes, now: float) -> None:
        self._fail(NotEventStream(self._about("not an event stream"), body_head=body[:BODY_HEAD_BYTES]), now)

    def _about(self, what: str) -> str:
        """`HTTP 200 text/html: <what>`: the status and content type say where an answer came from."""
        ctype = (self._ctype or b"no content-type").decode("latin-1")
        return f"HTTP {self._status} {ctype}: {what}"

    # -- buffered bodies -----------------------------------------------------------------------------

    def _buffer(self, data: bytes, now: float) -> None:
        self._body_len += len(data)
        if self._body_len > MAX_BODY_BYTES:
            self._fail(ProtocolError(f"response body exceeds {MAX_BODY_BYTES} bytes"), now)
            return
        self._body.append(data)

    def _read_json(self, body: bytes, now: float) -> None:
        head = body[:BODY_HEAD_BYTES]
        if not body or body.isspace():
            self._fail(EmptyResponse(self._about("empty body"), body_head=head), now)
            return
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            self._fail(ProtocolError(self._about("response body is not JSON"), body_head=head), now)
            return
        if type(obj) is not dict:
            self._fail(ProtocolError(self._about("response body is not a JSON object"), body_head=head), now)
            return
        what = error_of(obj)
        if what is not None:
            self._fail(ServerError(f"server returned an error: {what}"), now)
            return
        choices = obj.get("choices")
        if not choices or not isinstance(choices, list):
            self._fail(EmptyResponse(self._about("response has no choices"), body_head=head), now)
            return
        try:
            answer = self._read_choices(choices)
        except (AttributeError, TypeError):  # a choice or message that is not an object
            what = self._about("response choices of an unexpected shape")
            self._fail(ProtocolError(what, body_head=head), now)
            return
        usage = obj.get("usage")
        if usage:
            self._usage(usage)
        self.out.chunk_times.append(now)  # non-streaming: one chunk, at completion
        if answer:
            self.out.answer_times.append(now)
        cut = self._cut_off()
        if cut is not None:
            self._fail(cut, now)
            return
        self._finish(now)

    def _read_choices(self, choices: list[Any]) -> bool:
        """Text, reasoning and finish reason of a whole answer's choices; True if any has answer output."""
        answer = False
        for choice in choices:
            message = choice.get("message") or {}
            c = message.get("content") or choice.get("text")
            if c and type(c) is str:
                self._text.append(c)
            r = message.get("reasoning_content") or message.get("reasoning")
            if r and type(r) is str:
                self._reasoning.append(r)
            answer = answer or bool(c or message.get("tool_calls"))
            reason = choice.get("finish_reason")
            if reason:
                self.out.finish_reason = reason
        return answer

    # -- common --------------------------------------------------------------------------------------

    def _usage(self, usage: Any) -> None:
        if type(usage) is not dict:
            return
        p = usage.get("prompt_tokens")
        c = usage.get("completion_tokens")
        if type(p) is int:
            self.out.prompt_tokens = p
        if type(c) is int:
            self.out.completion_tokens = c
        details = usage.get("completion_tokens_details")
        if type(details) is dict and type(details.get("reasoning_tokens")) is int:
            self.out.reasoning_tokens = details["reasoning_tokens"]

    def _cut_off(self) -> ServerError | None:
        """The failure of a generation the server ended with a failed finish_reason, else None."""
        reason = self.out.finish_reason
        if type(reason) is str and reason in FAILED_FINISH_REASONS:
            return ServerError(f"the server ended the generation with finish_reason {reason!r}")
        return None

    def _finish(self, now: float) -> None:
        self.finished = True
        self.out.completed_at = now

    def _fail(self, exc: RequestError, now: float) -> None:
        self.failure = exc
        self.finished = True
        self.out.completed_at = now
