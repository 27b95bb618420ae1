"""Incremental Server-Sent Events parser (WHATWG event-stream rules, tuned for LLM token streams).

Bytes go in as they arrive (split anywhere, several events per read); each complete event is handed to
a callback as `(event_name or None, data)`. Lines may end in `\\n`, `\\r\\n` or `\\r` (also when the `\\r`
and `\\n` arrive in different reads). `:` comment lines (keep-alives), `id:` and `retry:` are skipped;
an `error:` field (llama.cpp's streaming errors) makes an `error` event of its value.

The common case, a read that holds whole `data: {...}\\n\\n` events with `\\n` endings, takes a fast
path: no copies beyond slicing each line once. A line longer than one read (a 1 MB event) is
accumulated in a bytearray and searched only in the new bytes, so it costs linear time.

Deliberate leniency: at the end of the body, a last event that lacks its blank line (or even its final
newline) is still dispatched, because several servers end the stream that way.
"""

from __future__ import annotations

from collections.abc import Callable

# A single pending line/event larger than this is treated as a broken stream rather than buffered forever.
MAX_EVENT_BYTES = 64 * 1024 * 1024

EventCallback = Callable[[bytes | None, bytes], object]


class SSEError(ValueError):
    """The stream cannot be parsed (only raised for an event above MAX_EVENT_BYTES)."""


class SSEParser:
    __slots__ = ("_data", "_event", "_on_event", "_skip_lf", "_tail", "max_event_bytes")

    def __init__(self, on_event: EventCallback, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._on_event = on_event
        self.max_event_bytes = max_event_bytes
        self._tail: bytearray | None = None  # unterminated last line (never contains \r or \n)
        self._data: bytes | None = None  # data of the event being built; None = no data line yet
        self._event: bytes | None = None
        self._skip_lf = False  # the previous read ended in \r: a leading \n belongs to it

    def feed(self, chunk: bytes) -> None:
        # The hot path: once per read. A read of whole `data: ...\n\n` events calls only the event
        # callback and copies nothing beyond the split (and the \r rewrite, for \r\n streams); the
        # rarer cases (a line or a \r\n that crosses reads) are the helpers' work.
        if not chunk:
            return
        if self._skip_lf:  # the last read ended in \r (rare: a \r\n split across reads, or \r endings)
            chunk = self._after_cr(chunk)
        if 13 in chunk:  # int membership is a memchr; much cheaper than a bytes search
            self._skip_lf = chunk[-1] == 13  # it is False here: set only when this read ends in \r
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        tail = self._tail
        if tail is not None:
            chunk = self._join_tail(tail, chunk)
        lines = chunk.split(b"\n")
        rest = lines.pop()  # after the last newline: an unterminated line, usually b""
        for line in lines:
            if not line:  # blank line: dispatch
                data = self._data
                if data is not None:
                    event = self._event
                    self._data = self._event = None
                    self._on_event(event, data)
                else:
                    self._event = None
            elif line[:6] == b"data: " and self._data is None:
                self._data = line[6:]  # the usual single-line `data: {...}`
            else:
                self._line(line)
        if rest:
            self._keep_tail(rest)

    def flush(self) -> None:
        """End of body: dispatch whatever complete-looking event is still pending."""
        if self._tail is not None:
            line = bytes(self._tail)
            self._tail = None
            self._line(line)
        if self._data is not None:
            self._dispatch()
        self._event = None
        self._skip_lf = False

    def _after_cr(self, chunk: bytes) -> bytes:
        """`chunk` without a leading \n: after a read that ended in \r, that \n belongs to the \r."""
        self._skip_lf = False
        return chunk[1:] if chunk[0] == 10 else chunk

    def _join_tail(self, tail: bytearray, chunk: bytes) -> bytes:
        """The bytes to split after a read that ended mid-line: the pending line `tail` plus `chunk`
        once a newline arrives, else b"" (nothing complete yet; `chunk` is kept in the pending line)."""
        tail += chunk
        if 10 not in chunk:  # still inside one long line: only the new bytes were searched
            if len(tail) > self.max_event_bytes:
                raise SSEError(f"an event line exceeds {self.max_event_bytes} bytes")
            return b""
        self._tail = None
        return bytes(tail)

    def _keep_tail(self, rest: bytes) -> None:
        """A read ended mid-line: keep the start of that line for the next read."""
        if len(rest) > self.max_event_bytes:
            raise SSEError(f"an event line exceeds {self.max_event_bytes} bytes")
        self._tail = bytearray(rest)

    def _line(self, line: bytes) -> None:
        if line[:5] == b"data:":
            value = line[6:] if line[5:6] == b" " else line[5:]
        elif line[:1] == b":":
            return  # comment / keep-alive
        else:
            field, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if field == b"event":
                self._event = value
                return
            if field != b"data":
                if field != b"error":
                    return  # id, retry and unknown fields do not matter here
                # llama.cpp's llama-server sends a streaming error as `error: {...}` (then [DONE]):
                # dropped as an unknown field, the stream would read as a success.
                self._event = b"error"
        if self._data is None:
            self._data = value
        else:
            self._data = self._data + b"\n" + value
            if len(self._data) > self.max_event_bytes:
                raise SSEError(f"an event exceeds {self.max_event_bytes} bytes")

    def _dispatch(self) -> None:
        data = self._data
        event = self._event
        self._data = None
        self._event = None
        self._on_event(event, data)  # type: ignore[arg-type]  # a dispatch follows a data line: data is set
