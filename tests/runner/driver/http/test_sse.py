"""The incremental SSE parser gives the same events however the bytes are split across reads."""

from __future__ import annotations

import pytest
from veeksha.runner.driver.http.sse import SSEError, SSEParser

STREAM = (
    b": keep-alive\n\n"
    b'data: {"choices":[{"delta":{"role":"assistant","content":null}}]}\n\n'
    b'data:{"a":1}\n\n'
    b"event: error\n"
    b'data: {"message":"x"}\n\n'
    b"id: 7\nretry: 100\n"
    b"data: line one\n"
    b"data: line two\n\n"
    b"data\n\n"
    b": comment between events\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    (None, b'{"choices":[{"delta":{"role":"assistant","content":null}}]}'),
    (None, b'{"a":1}'),
    (b"error", b'{"message":"x"}'),
    (None, b"line one\nline two"),
    (None, b""),
    (None, b"[DONE]"),
]


def parse(*reads: bytes, flush: bool = True) -> list[tuple[bytes | None, bytes]]:
    events: list[tuple[bytes | None, bytes]] = []
    parser = SSEParser(lambda ev, data: events.append((ev, data)))
    for read in reads:
        parser.feed(read)
    if flush:
        parser.flush()
    return events


def test_whole_stream_in_one_read() -> None:
    assert parse(STREAM) == EXPECTED


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_split_at_every_byte_offset_with_each_line_ending(eol: bytes) -> None:
    stream = STREAM.replace(b"\n", eol)
    for cut in range(len(stream) + 1):
        assert parse(stream[:cut], stream[cut:]) == EXPECTED, (eol, cut)


def test_split_at_every_pair_of_offsets_with_crlf() -> None:
    stream = STREAM.replace(b"\n", b"\r\n")
    step = 3  # every third pair keeps this quick; the single-cut test covers each byte
    for a in range(0, len(stream), step):
        for b in range(a, len(stream), step):
            assert parse(stream[:a], stream[a:b], stream[b:]) == EXPECTED, (a, b)


def test_one_byte_per_read() -> None:
    for eol in (b"\n", b"\r\n"):
        stream = STREAM.replace(b"\n", eol)
        assert parse(*(stream[i : i + 1] for i in range(len(stream)))) == EXPECTED


def test_events_are_dispatched_as_soon_as_their_blank_line_arrives() -> None:
    events: list[bytes] = []
    parser = SSEParser(lambda ev, data: events.append(data))
    parser.feed(b"data: a\n")
    assert events == []
    parser.feed(b"\ndata: b\n\nda")
    assert events == [b"a", b"b"]


def test_crlf_split_between_cr_and_lf_does_not_make_an_extra_blank_line() -> None:
    # "data: a\r" | "\n" | "data: b\r\n\r\n": a and b are one event with two data lines
    assert parse(b"data: a\r", b"\ndata: b\r\n\r\n") == [(None, b"a\nb")]


def test_comment_only_and_empty_reads_produce_nothing() -> None:
    assert parse(b"", b": ping\n\n", b":\n\n", b"") == []


def test_end_of_body_dispatches_an_unterminated_last_event() -> None:
    assert parse(b'data: {"x":1}') == [(None, b'{"x":1}')]
    assert parse(b'data: {"x":1}\n') == [(None, b'{"x":1}')]
    assert parse(b'data: {"x":1}', flush=False) == []


def test_event_name_does_not_leak_into_the_next_event() -> None:
    assert parse(b"event: error\n\ndata: ok\n\n") == [(None, b"ok")]


def test_line_over_one_megabyte_split_across_many_reads() -> None:
    big = b'{"content":"' + b"y" * 1_500_000 + b'"}'
    stream = b"data: " + big + b"\n\ndata: [DONE]\n\n"
    reads = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]
    assert parse(*reads) == [(None, big), (None, b"[DONE]")]


def test_event_above_the_limit_is_an_error_not_unbounded_memory() -> None:
    parser = SSEParser(lambda ev, data: None, max_event_bytes=1000)
    parser.feed(b"data: " + b"z" * 600)
    with pytest.raises(SSEError):
        parser.feed(b"z" * 600)


def test_one_whole_event_per_read_as_token_streams_send_them() -> None:
    # The parser's fast path: each read is exactly `data: ...\n\n`; state from earlier reads
    # (a named event, a first data line) still applies to it.
    reads = [
        b'data: {"n":1}\n\n',
        b"data: \n\n",
        b"event: error\n",
        b"data: x\n\n",
        b"data: a\n",
        b"data: b\n\n",
    ]
    assert parse(*reads) == [(None, b'{"n":1}'), (None, b""), (b"error", b"x"), (None, b"a\nb")]


def test_an_error_field_is_an_error_event_with_its_value_as_data() -> None:
    # llama.cpp's llama-server reports a streaming error this way, then sends [DONE].
    stream = b'data: {"n":1}\n\nerror: {"message":"decode failed"}\n\ndata: [DONE]\n\n'
    expected = [(None, b'{"n":1}'), (b"error", b'{"message":"decode failed"}'), (None, b"[DONE]")]
    assert parse(stream) == expected
    assert parse(*(stream[i : i + 1] for i in range(len(stream)))) == expected
