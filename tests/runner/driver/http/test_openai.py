"""Request bodies and response interpretation for the OpenAI-compatible endpoints (no network here)."""

from __future__ import annotations

import orjson
import pytest
from veeksha.runner.driver.http.client import build_headers, endpoint_url, secret_values
from veeksha.runner.driver.http.openai import BODY_HEAD_BYTES, RequestBuilder, ResponseReader, error_text
from veeksha.runner.driver.http.outcome import Outcome
from veeksha.shared.config import ClientConfig

from tests.runner.driver.http.quirk_server import DONE, STANDARD, chat, event, usage_event

MESSAGES = [{"role": "user", "content": "hi"}]


def cfg(**kw) -> ClientConfig:
    return ClientConfig(**{"api_base": "http://h/v1", "model": "m", **kw})


# -- request bodies ------------------------------------------------------------------------------------


def test_chat_body_defaults_and_key_order() -> None:
    body = RequestBuilder(cfg()).body(MESSAGES, 64)
    assert body == (
        b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":64,'
        b'"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}'
    )


def test_completions_body_uses_prompt_and_max_tokens() -> None:
    c = cfg(type="openai_completions", stream=False, ignore_eos=False)
    assert orjson.loads(RequestBuilder(c).body("Once", 8)) == {
        "model": "m",
        "prompt": "Once",
        "max_tokens": 8,
        "stream": False,
    }


def test_optional_params_and_sampling_params_merge_last() -> None:
    c = cfg(
        max_tokens_param="max_tokens",
        min_tokens_param="min_tokens",
        include_usage=False,
        additional_sampling_params={"temperature": 0.0, "ignore_eos": False},
    )
    body = orjson.loads(RequestBuilder(c).body(MESSAGES, 5))
    assert list(body) == [
        "model",
        "messages",
        "max_tokens",
        "min_tokens",
        "ignore_eos",
        "stream",
        "temperature",
    ]
    assert body["min_tokens"] == 5 and body["ignore_eos"] is False and "stream_options" not in body


def test_same_inputs_give_byte_identical_bodies() -> None:
    a = RequestBuilder(cfg(additional_sampling_params={"top_p": 0.9, "seed": 1})).body(MESSAGES, 9)
    b = RequestBuilder(cfg(additional_sampling_params={"top_p": 0.9, "seed": 1})).body(MESSAGES, 9)
    assert a == b


def test_chat_accepts_a_bare_prompt_string_completions_refuses_messages() -> None:
    assert orjson.loads(RequestBuilder(cfg()).body("hi", 1))["messages"] == MESSAGES
    with pytest.raises(TypeError):
        RequestBuilder(cfg(type="openai_completions")).body(MESSAGES, 1)


def test_headers_auth_and_user_overrides() -> None:
    headers = dict(build_headers(cfg(api_key="sk-abc", headers={"X-Team": "a", "accept": "*/*"})))
    assert headers["Authorization"] == "Bearer sk-abc"
    assert headers["X-Team"] == "a" and headers["accept"] == "*/*" and "Accept" not in headers
    assert "sk-abc" in secret_values(cfg(api_key="sk-abc"))


def test_endpoint_url_keeps_query_string() -> None:
    assert endpoint_url("http://h:1/v1/", "/chat/completions") == "http://h:1/v1/chat/completions"
    assert endpoint_url("https://h/openai?api-version=2024", "/completions") == (
        "https://h/openai/completions?api-version=2024"
    )


# -- responses ---------------------------------------------------------------------------------------


def read(reads: list[tuple[bytes, float]], stream: bool = True, ctype: bytes = b"text/event-stream"):
    out = Outcome()
    reader = ResponseReader(out, stream)
    reader.on_start(200, ctype)
    for data, now in reads:
        if reader.on_body(data, now):
            break
    else:
        reader.on_end(99.0)
    reader.finalize()
    return out, reader


def test_standard_stream_chunks_text_usage_and_done_time() -> None:
    out, reader = read([(e, float(i)) for i, e in enumerate(STANDARD)])
    assert reader.failure is None
    assert out.chunk_times == [1.0, 2.0, 3.0]  # role-only, finish-only and usage-only are not chunks
    assert out.text == "Hello world"
    assert (out.prompt_tokens, out.completion_tokens, out.finish_reason) == (7, 3, "stop")
    assert out.completed_at == 6.0  # [DONE]


def test_events_in_one_read_share_its_arrival_time() -> None:
    out, _ = read([(b"".join(STANDARD[:3]), 1.5), (b"".join(STANDARD[3:]), 2.5)])
    assert out.chunk_times == [1.5, 1.5, 2.5]


def test_usage_null_or_missing_means_absent() -> None:
    out, _ = read([(chat("a", usage=None) + chat("b") + DONE, 1.0)])
    assert out.prompt_tokens is None and out.completion_tokens is None


def test_without_done_the_end_of_body_completes_the_stream() -> None:
    out, reader = read([(chat("a") + usage_event(1, 1), 1.0)])
    assert reader.failure is None and out.completed_at == 99.0 and len(out.chunk_times) == 1


def read_closed(data: bytes) -> tuple[Outcome, ResponseReader]:
    """A stream whose body a connection close ended (no Content-Length, no chunked encoding)."""
    out = Outcome()
    reader = ResponseReader(out, True)
    reader.on_start(200, b"text/event-stream")
    assert not reader.on_body(data, 1.0)
    reader.on_end(99.0, closed=True)
    reader.finalize()
    return out, reader


@pytest.mark.parametrize("data", [chat("a") + chat("b"), chat(None, role="assistant"), b""])
def test_a_close_that_ends_a_stream_without_done_or_finish_reason_cut_it_short(data: bytes) -> None:
    out, reader = read_closed(data)
    assert reader.failure is not None and reader.failure.error_type == "connection_dropped"
    assert "before the stream ended (no [DONE], no finish_reason)" in reader.failure.message
    assert out.completed_at == 99.0 and out.finish_reason is None


def test_a_close_that_ends_a_stream_with_a_finish_reason_completes_it() -> None:
    out, reader = read_closed(chat("a") + chat(finish="length") + usage_event(1, 1))
    assert reader.failure is None and out.completed_at == 99.0 and out.text == "a"


@pytest.mark.parametrize(
    ("data", "error_type"),
    [
        (chat("a") + chat(finish="abort"), "server_error"),  # a cut-off generation stays a server error
        (b'{"error": {"message": "overloaded"}}', "server_error"),  # a bare JSON error, too
        (chat(None, role="assistant") + chat(finish="stop"), "empty_response"),  # ended, no output
    ],
)
def test_a_close_keeps_the_more_telling_failures(data: bytes, error_type: str) -> None:
    _, reader = read_closed(data)
    assert reader.failure is not None and reader.failure.error_type == error_type


def test_data_after_done_is_ignored() -> None:
    out, _ = read([(chat("a") + DONE + chat("b"), 1.0)])
    assert out.text == "a" and out.chunk_times == [1.0]


def test_error_data_mid_stream_keeps_earlier_chunks() -> None:
    out, reader = read([(chat("a"), 1.0), (event({"error": {"message": "boom"}}), 2.0)])
    assert reader.failure is not None and reader.failure.error_type == "server_error"
    assert "boom" in reader.failure.message and out.chunk_times == [1.0] and out.text == "a"
    assert out.completed_at == 2.0


def test_non_json_event_is_a_protocol_error() -> None:
    _, reader = read([(b"data: {not json\n\n", 1.0)])
    assert reader.failure is not None and reader.failure.error_type == "protocol_error"


def test_non_streaming_body_is_one_chunk_at_completion() -> None:
    body = orjson.dumps(
        {
            "choices": [{"message": {"content": "Hi", "reasoning_content": "hm"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }
    )
    out, reader = read([(body[:10], 1.0), (body[10:], 2.0)], stream=False, ctype=b"application/json")
    assert reader.failure is None
    assert out.chunk_times == [99.0] and out.completed_at == 99.0 and out.text == "Hi"
    assert (out.prompt_tokens, out.completion_tokens) == (3, 1)
    assert out.reasoning_text == "hm" and out.answer_times == [99.0]


def test_a_non_streamed_answer_of_reasoning_only_has_no_answer_chunk() -> None:
    body = orjson.dumps({"choices": [{"message": {"content": None, "reasoning": "hm"}}]})
    out, reader = read([(body, 1.0)], stream=False, ctype=b"application/json")
    assert reader.failure is None and out.chunk_times == [99.0]
    assert out.answer_times == []


def test_reasoning_chunks_come_before_the_first_answer_chunk_and_usage_counts_them() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 4, "completion_tokens_details": {"reasoning_tokens": 2}}
    reads = [
        (chat(None, reasoning_content="a"), 1.0),
        (chat(None, reasoning="b"), 2.0),
        (chat("x") + chat("y"), 3.0),
        (chat("z"), 4.0),
        (event({"choices": [], "usage": usage}) + DONE, 5.0),
    ]
    out, reader = read(reads)
    assert reader.failure is None and out.chunk_times == [1.0, 2.0, 3.0, 3.0, 4.0]
    assert out.answer_times == [3.0, 3.0, 4.0]  # two events in one read share its time
    assert (out.text, out.reasoning_text, out.reasoning_tokens) == ("xyz", "ab", 2)


def test_usage_without_reasoning_details_leaves_the_count_unknown() -> None:
    out, _ = read([(chat("x") + usage_event(1, 1) + DONE, 1.0)])
    assert out.reasoning_tokens is None and out.reasoning_text == ""


def test_http_error_body_message_is_extracted() -> None:
    out = Outcome()
    reader = ResponseReader(out, True)
    reader.on_start(429, b"application/json")
    reader.on_body(b'{"error":{"message":"rate limited\\nretry later","code":429}}', 1.0)
    reader.on_end(1.0)
    assert reader.failure is not None
    assert reader.failure.error_type == "http_error" and reader.failure.http_status == 429
    assert reader.failure.message == "HTTP 429: rate limited retry later"


def test_an_error_message_nested_deeper_than_the_recursion_limit_is_found() -> None:
    body = b'{"error":' * 1000 + b'{"message":"deep down"}' + b"}" * 1000  # orjson reads 1024 levels
    assert error_text(orjson.loads(body)) == "deep down"


# -- what a 2xx must carry to be a success --------------------------------------------------------------


def test_a_stream_without_a_content_chunk_is_an_empty_response() -> None:
    out, reader = read([(chat(None, role="assistant") + usage_event(3, 0) + DONE, 1.0)])
    assert reader.failure is not None and reader.failure.error_type == "empty_response"
    assert reader.failure.body_head.startswith(b"data: {")  # the first read, for the preview
    assert out.completed_at == 1.0 and out.prompt_tokens == 3  # what arrived is kept


def test_a_body_of_another_content_type_is_read_by_its_first_bytes() -> None:
    # Blank lines, then "data:" split across reads: an event stream despite the text/plain label.
    reads = [(b"\n", 1.0), (b"da", 2.0), (b"ta: " + chat("a")[6:] + DONE, 3.0)]
    out, reader = read(reads, ctype=b"text/plain")
    assert reader.failure is None and out.chunk_times == [3.0] and out.text == "a"
    body = orjson.dumps({"choices": [{"message": {"content": "Hi"}}]})
    out, reader = read([(b" ", 1.0), (body, 2.0)], ctype=None)
    assert reader.failure is None and out.text == "Hi" and out.chunk_times == [99.0]  # JSON


def test_a_body_that_is_no_event_stream_fails_without_waiting_for_its_end() -> None:
    page = b"<html>" + b"x" * 5000
    out, reader = read([(page[:500], 1.0), (page[500:], 2.0), (b"never read", 3.0)], ctype=b"text/html")
    assert reader.failure is not None and reader.failure.error_type == "not_event_stream"
    assert reader.failure.message == "HTTP 200 text/html: not an event stream"
    assert reader.failure.body_head == page[:BODY_HEAD_BYTES] and out.completed_at == 2.0


def test_short_or_blank_bodies() -> None:
    _, reader = read([(b"da", 1.0)], ctype=None)  # could have become "data:", but the body ended
    assert reader.failure is not None and reader.failure.error_type == "not_event_stream"
    _, reader = read([(b"\n\n", 1.0), (b" ", 2.0)], ctype=b"text/plain")
    assert reader.failure is not None and reader.failure.error_type == "empty_response"
    assert reader.failure.message == "HTTP 200 text/plain: empty body"
    _, reader = read([(b"  ", 1.0)], stream=False, ctype=b"application/json")
    assert reader.failure is not None and reader.failure.error_type == "empty_response"


@pytest.mark.parametrize(
    "body",
    [
        b'data: {"choices": ["x"]}\n\n',
        b'data: {"choices": [{"delta": "x"}]}\n\n',
        b'data: {"choices": 5}\n\n',
    ],
)
def test_a_stream_event_of_an_unexpected_shape_is_a_protocol_error_not_a_crash(body: bytes) -> None:
    _, reader = read([(body, 1.0)])
    assert reader.failure is not None and reader.failure.error_type == "protocol_error"
    assert "unexpected shape" in reader.failure.message


def test_fields_the_driver_does_not_read_change_nothing() -> None:
    # The typed decoder (chunks.py) skips unknown keys, nested or not: the same answer as a bare chunk.
    rich = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "m",
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "Hi", "extra": {"deep": [1, {"x": None}]}},
                "logprobs": {"content": [{"token": "Hi", "logprob": -0.1, "top_logprobs": []}]},
                "finish_reason": None,
            }
        ],
    }
    out, reader = read([(event(rich) + DONE, 1.0)])
    assert reader.failure is None and out.text == "Hi" and out.chunk_times == [1.0]


def test_an_error_key_fails_the_event_only_when_it_holds_something() -> None:
    # `"error": null` beside the choices is no error; a named event is read the same way.
    out, reader = read([(event({"error": None, "choices": [{"delta": {"content": "a"}}]}), 1.0)])
    assert reader.failure is None and out.text == "a" and out.chunk_times == [1.0]
    out, reader = read([(b"event: message\n" + chat("b") + DONE, 2.0)])
    assert reader.failure is None and out.text == "b" and out.chunk_times == [2.0]
    _, reader = read([(chat("a") + event({"error": "overloaded", "choices": []}), 3.0)])
    assert reader.failure is not None and reader.failure.error_type == "server_error"
    assert "overloaded" in reader.failure.message


def test_a_whole_answer_of_an_unexpected_shape_is_a_protocol_error() -> None:
    body = orjson.dumps({"choices": ["x"]})
    _, reader = read([(body, 1.0)], stream=False, ctype=b"application/json")
    assert reader.failure is not None and reader.failure.error_type == "protocol_error"


def test_a_finish_reason_that_is_not_a_string_is_kept_not_a_failure() -> None:
    """Some servers' native formats put an object there: no crash, no wrong failure."""
    out = Outcome()
    reader = ResponseReader(out, stream=True)
    reader.on_start(200, b"text/event-stream")
    reader.on_body(chat("Hi") + chat(finish={"type": "stop"}) + DONE, 1.0)
    reader.finalize()
    assert reader.failure is None and reader.finished and out.text == "Hi"
