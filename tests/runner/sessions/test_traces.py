"""Trace replay: request logs and recorded conversations from local files."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from veeksha.runner.sessions.factory import make_session_generator
from veeksha.runner.sessions.model import Session
from veeksha.runner.sessions.tokenizer import count_tokens_approx
from veeksha.runner.sessions.traces import CONVERSATION, REQUEST_LOG, TraceSessionGenerator
from veeksha.shared.config_loader import build_benchmark_config
from veeksha.shared.errors import ConfigError
from veeksha.shared.records import COUNT_APPROXIMATE

DATA = Path(__file__).parent / "data"


def trace_generator(path: Path | str, seed: int = 42, **options: Any) -> TraceSessionGenerator:
    cfg = build_benchmark_config(
        {"seed": seed, "session_generator": {"type": "trace", "path": str(path), **options}}
    )
    gen = make_session_generator(cfg)
    assert isinstance(gen, TraceSessionGenerator)
    return gen


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def drain(gen: TraceSessionGenerator, limit: int = 1000) -> list[Session]:
    sessions = []
    for _ in range(limit):
        session = gen.next_session()
        if session is None:
            return sessions
        sessions.append(session)
    raise AssertionError("the trace never ended")


REQUESTS = [
    {"timestamp": 100.0, "input_length": 12, "output_length": 5},
    {"timestamp": 101.5, "input_length": 300, "output_length": 64},
    {"timestamp": 103.0, "input_length": 1, "output_length": 0},
]


# ---------------------------------------------------------------- request logs


def test_a_request_log_gives_one_request_per_record(tmp_path: Path) -> None:
    gen = trace_generator(write_jsonl(tmp_path / "t.jsonl", REQUESTS), wrap=False)
    assert gen.flavor == REQUEST_LOG
    assert gen.token_count_source == COUNT_APPROXIMATE
    sessions = drain(gen)
    assert [s.session_id for s in sessions] == [0, 1, 2]
    for session, rec in zip(sessions, REQUESTS, strict=True):
        (node,) = session.nodes
        assert node.parents == () and node.history_parent is None
        assert node.target_prompt_tokens == node.num_content_tokens == rec["input_length"]
        assert count_tokens_approx(node.content) == rec["input_length"]
        assert node.requested_output_tokens == max(1, rec["output_length"])
        assert session.arrival_offset is None  # not timed: the traffic scheduler sets the pace


def test_timed_replay_turns_timestamps_into_offsets_from_the_first(tmp_path: Path) -> None:
    gen = trace_generator(write_jsonl(tmp_path / "t.jsonl", REQUESTS), timed_replay=True, wrap=False)
    assert [s.arrival_offset for s in drain(gen)] == [0.0, 1.5, 3.0]
    faster = trace_generator(tmp_path / "t.jsonl", timed_replay=True, time_scale=2.0, wrap=False)
    assert [s.arrival_offset for s in drain(faster)] == [0.0, 0.75, 1.5]


def test_timed_replay_sorts_records_by_time(tmp_path: Path) -> None:
    gen = trace_generator(
        write_jsonl(tmp_path / "t.jsonl", [REQUESTS[1], REQUESTS[0], REQUESTS[2]]),
        timed_replay=True,
        wrap=False,
    )
    sessions = drain(gen)
    assert [s.arrival_offset for s in sessions] == [0.0, 1.5, 3.0]
    assert [s.nodes[0].target_prompt_tokens for s in sessions] == [12, 300, 1]


def test_a_wrapped_trace_starts_over_and_keeps_time_moving_forward(tmp_path: Path) -> None:
    gen = trace_generator(write_jsonl(tmp_path / "t.jsonl", REQUESTS), timed_replay=True)
    sessions = [gen.next_session() for _ in range(7)]
    # One pass spans 3 s; the next starts one average gap (1.5 s) after the last record.
    assert [s.arrival_offset for s in sessions] == [0.0, 1.5, 3.0, 4.5, 6.0, 7.5, 9.0]
    assert [s.nodes[0].target_prompt_tokens for s in sessions] == [12, 300, 1] * 2 + [12]
    assert sessions[0].nodes[0].content != sessions[3].nodes[0].content  # fresh prompt text each pass


def test_a_csv_trace_with_azure_columns_and_iso_times(tmp_path: Path) -> None:
    gen = trace_generator(DATA / "azure_style.csv", timed_replay=True, wrap=False)
    sessions = drain(gen)
    assert [s.nodes[0].target_prompt_tokens for s in sessions] == [374, 396, 879]
    assert [s.nodes[0].requested_output_tokens for s in sessions] == [44, 109, 1]
    assert [s.arrival_offset for s in sessions] == pytest.approx([0.0, 4.314579, 4.514579])


def test_a_plain_csv_request_log(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("input_length,output_length\n10,20\n30,40\n")
    sessions = drain(trace_generator(path, wrap=False))
    assert [(s.nodes[0].target_prompt_tokens, s.nodes[0].requested_output_tokens) for s in sessions] == [
        (10, 20),
        (30, 40),
    ]


def test_trace_prompts_are_reproducible_from_the_seed(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", REQUESTS)
    assert drain(trace_generator(path, wrap=False)) == drain(trace_generator(path, wrap=False))
    assert drain(trace_generator(path, wrap=False)) != drain(trace_generator(path, seed=1, wrap=False))


# ---------------------------------------------------------------- conversations


def test_a_sharegpt_file_gives_linear_sessions_of_the_human_turns() -> None:
    gen = trace_generator(DATA / "sharegpt_sample.json", wrap=False)
    assert gen.flavor == CONVERSATION
    assert gen.skipped_records == 1  # the empty conversation
    first, second = drain(gen)
    assert [n.content for n in first.nodes] == ["What is the capital of France?", "And of Italy?"]
    assert [n.parents for n in first.nodes] == [(), (0,)]
    assert [n.history_parent for n in first.nodes] == [None, 0]
    assert [n.requested_output_tokens for n in first.nodes] == [6, 6]  # the recorded replies' lengths
    for node in first.nodes:
        assert node.num_content_tokens == node.target_prompt_tokens == count_tokens_approx(node.content)
    # System message dropped, consecutive human messages merged, the unanswered last turn dropped.
    assert [n.content for n in second.nodes] == ["Say hi\n\ntwice please"]
    assert second.nodes[0].requested_output_tokens == 2


def test_openai_style_messages_jsonl(tmp_path: Path) -> None:
    record = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello there"}]},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "bye"},
            {"role": "assistant", "content": ""},
        ]
    }
    (session,) = drain(trace_generator(write_jsonl(tmp_path / "m.jsonl", [record]), wrap=False))
    assert [n.content for n in session.nodes] == ["hello there", "bye"]
    assert [n.requested_output_tokens for n in session.nodes] == [1, 1]  # at least one token


def test_a_wrapped_conversation_trace_replays_from_the_start() -> None:
    gen = trace_generator(DATA / "sharegpt_sample.json")
    sessions = [gen.next_session() for _ in range(5)]
    assert [len(s.nodes) for s in sessions] == [2, 1, 2, 1, 2]
    assert [s.session_id for s in sessions] == [0, 1, 2, 3, 4]


def test_a_conversation_file_with_no_usable_turns_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "c.jsonl", [{"conversations": []}, {"conversations": [{"from": "gpt", "value": "x"}]}]
    )
    with pytest.raises(ConfigError, match="no conversation has a user message followed by a reply"):
        trace_generator(path)


# ---------------------------------------------------------------- errors


def test_a_missing_trace_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"session_generator\.path: .*nope\.jsonl.* does not exist"):
        trace_generator(tmp_path / "nope.jsonl")


def test_a_trace_path_of_an_unknown_user_names_the_key() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^config error at session_generator\.path: '~nouser-x9/t\.jsonl' starts with ~, but nouser-x9 "
        "has no home directory on this machine; give the full path$",
    ):
        trace_generator("~nouser-x9/t.jsonl")


@pytest.mark.parametrize("url", ["https://example.com/trace.jsonl", "http://10.0.0.1/t.csv"])
def test_a_trace_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="local files only"):
        trace_generator(url)


def test_a_record_missing_a_required_field_names_the_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [REQUESTS[0], {"input_length": 5}])
    with pytest.raises(ConfigError, match=r"t\.jsonl line 2: missing required field 'output_length'"):
        trace_generator(path)


def test_a_bad_length_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("input_length,output_length\n10,20\n-3,40\n")
    with pytest.raises(ConfigError, match=r"t\.csv line 3: 'input_length' must be a non-negative integer"):
        trace_generator(path)


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(REQUESTS[0]) + "\n\n{oops\n")
    with pytest.raises(ConfigError, match=r"t\.jsonl line 3: invalid JSON"):
        trace_generator(path)


def test_an_unknown_record_shape_says_what_is_expected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "hi"}])
    with pytest.raises(ConfigError, match=r"line 1: cannot tell the trace flavor: expected 'input_length'"):
        trace_generator(path)


def test_a_forced_flavor_checks_every_record_against_it(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", REQUESTS)
    with pytest.raises(ConfigError, match=r"line 1: expected 'conversations' or 'messages'"):
        trace_generator(path, flavor="conversation")


def test_timed_replay_needs_every_timestamp(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [REQUESTS[0], {"input_length": 5, "output_length": 5}])
    with pytest.raises(ConfigError, match=r"line 2: timed_replay needs a 'timestamp'"):
        trace_generator(path, timed_replay=True)


def test_timed_replay_of_conversations_names_the_record_without_a_time(tmp_path: Path) -> None:
    turn = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    records = [{"conversations": []}, {"conversations": turn, "timestamp": 5}, {"conversations": turn}]
    path = write_jsonl(tmp_path / "c.jsonl", records)
    with pytest.raises(ConfigError, match=r"c\.jsonl line 3: timed_replay needs a 'timestamp'"):
        trace_generator(path, timed_replay=True)
    path = write_jsonl(tmp_path / "c.jsonl", records[:2])
    assert [s.arrival_offset for s in drain(trace_generator(path, timed_replay=True, wrap=False))] == [0.0]


def test_wrapping_a_trace_without_time_span_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [REQUESTS[0]])
    with pytest.raises(ConfigError, match="endless burst"):
        trace_generator(path, timed_replay=True)
    assert [s.arrival_offset for s in drain(trace_generator(path, timed_replay=True, wrap=False))] == [0.0]


def test_a_malformed_message_names_its_record(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"conversations": [{"from": "human"}]}]))
    with pytest.raises(ConfigError, match=r"c\.json record 1: message 0 needs 'from' and 'value'"):
        trace_generator(path)


def test_an_empty_trace_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("\n")
    with pytest.raises(ConfigError, match="has no records"):
        trace_generator(path)


# ---------------------------------------------------------------- what exports and logs look like


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity"])
def test_a_timestamp_that_is_not_finite_names_the_file_and_line(tmp_path: Path, bad: str) -> None:
    """pandas writes a missing value as `nan`: it used to sort anywhere and send its session at once."""
    path = tmp_path / "t.csv"
    path.write_text(f"input_length,output_length,timestamp\n10,5,5\n10,5,{bad}\n10,5,1\n")
    with pytest.raises(ConfigError, match=r"t\.csv line 3: 'timestamp' must be finite seconds"):
        trace_generator(path, timed_replay=True, wrap=False)
    assert len(drain(trace_generator(path, wrap=False))) == 3  # not replayed on time: not needed


def test_a_date_time_without_an_offset_is_utc_wherever_the_run_happens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    records = [
        {"timestamp": "2024-03-10T06:59:00Z", "input_length": 1, "output_length": 1},
        {"timestamp": "2024-03-10T07:30:00", "input_length": 1, "output_length": 1},  # DST starts in New York
        {"timestamp": "2024-03-10T08:01:00", "input_length": 1, "output_length": 1},
    ]
    path = write_jsonl(tmp_path / "t.jsonl", records)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        offsets = [s.arrival_offset for s in drain(trace_generator(path, timed_replay=True, wrap=False))]
    finally:
        monkeypatch.undo()
        time.tzset()
    assert offsets == [0.0, 1860.0, 3720.0]


@pytest.mark.parametrize("name", ["t.csv", "t.jsonl", "t.json"])
def test_a_byte_order_mark_is_read_past(tmp_path: Path, name: str) -> None:
    """Excel's "CSV UTF-8" and some exporters start the file with one."""
    text = {
        "t.csv": "input_length,output_length\n10,20\n",
        "t.jsonl": json.dumps({"input_length": 10, "output_length": 20}) + "\n",
        "t.json": json.dumps([{"input_length": 10, "output_length": 20}]),
    }[name]
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    (session,) = drain(trace_generator(path, wrap=False))
    assert (session.nodes[0].target_prompt_tokens, session.nodes[0].requested_output_tokens) == (10, 20)


def test_csv_header_names_are_read_without_their_spaces(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("input_length, output_length\n10, 20\n")
    (session,) = drain(trace_generator(path, wrap=False))
    assert session.nodes[0].requested_output_tokens == 20


def test_tool_call_turns_and_parts_without_text_are_read_as_no_text(tmp_path: Path) -> None:
    """OpenAI logs: an assistant turn of tool calls has `content: null`; a part may hold no string."""
    record = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": None}, {"type": "text", "text": "rain?"}],
            },
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ]
    }
    (session,) = drain(trace_generator(write_jsonl(tmp_path / "m.jsonl", [record]), wrap=False))
    assert [n.content for n in session.nodes] == ["rain?"]


def test_a_length_beyond_ten_million_tokens_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("input_length,output_length\n10,20\n1e20,40\n")
    with pytest.raises(ConfigError, match=r"t\.csv line 3: 'input_length' is '1e20', more than 10,000,000"):
        trace_generator(path)


def test_time_scale_without_timed_replay_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", REQUESTS)
    with pytest.raises(ConfigError, match="time_scale: only a timed replay uses it"):
        trace_generator(path, time_scale=2.0)


# ---------------------------------------------------------------- review: CJK, limits, directories


def test_a_chinese_conversation_without_a_tokenizer_asks_for_about_one_token_per_character(
    tmp_path: Path,
) -> None:
    """The approximation counted whitespace-separated words: a 460-character reply was 1 token."""
    question = "请详细解释一下量子计算的基本原理以及它与经典计算的区别"  # 27 characters
    reply = "量子计算利用量子比特的叠加和纠缠特性进行计算。" * 20  # 460 characters
    record = {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": reply}]}
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    (session,) = drain(trace_generator(path, wrap=False))
    (node,) = session.nodes
    assert (node.num_content_tokens, node.requested_output_tokens) == (27, 460)  # cl100k_base: 30, 500


def _timed(tmp_path: Path, *timestamps: float) -> Path:
    records = [{"timestamp": t, "input_length": 1, "output_length": 1} for t in timestamps]
    return write_jsonl(tmp_path / "t.jsonl", records)


def _offsets(path: Path, **options: Any) -> list[float | None]:
    return [s.arrival_offset for s in drain(trace_generator(path, timed_replay=True, wrap=False, **options))]


@pytest.mark.parametrize("wrap", [False, True])
def test_timestamps_whose_difference_overflows_are_a_config_error(tmp_path: Path, wrap: bool) -> None:
    """-1e308 and 1e308 are 2e308 apart: inf, so every session got a NaN or inf offset and none was sent."""
    path = _timed(tmp_path, -1e308, 1e308)
    with pytest.raises(ConfigError, match=r"t\.jsonl line 2: timed_replay offset inf s .* is not finite"):
        trace_generator(path, timed_replay=True, wrap=wrap)


def test_a_time_scale_so_small_that_offsets_overflow_is_a_config_error(tmp_path: Path) -> None:
    path = _timed(tmp_path, 1000.0, 1001.0, 1000.5)
    # The first record past the limit in time order: 1000.5, on line 3.
    with pytest.raises(ConfigError, match=r"t\.jsonl line 3: .*at time_scale 1e-310\) is not finite"):
        trace_generator(path, timed_replay=True, time_scale=1e-310, wrap=False)


def test_a_timed_replay_longer_than_a_week_is_a_config_error(tmp_path: Path) -> None:
    week = 7 * 24 * 3600
    path = _timed(tmp_path, 0.0, 100.0, 100.0 + week)
    with pytest.raises(ConfigError, match=r"t\.jsonl line 3: timed_replay offset 604900 s .* more than"):
        trace_generator(path, timed_replay=True, wrap=False)
    assert _offsets(path, time_scale=1000.0) == pytest.approx([0.0, 0.1, 604.9])  # milliseconds fit
    # Exactly a week is allowed; a wrap period of a week and one average gap is not.
    path = _timed(tmp_path, 0.0, float(week))
    assert _offsets(path) == [0.0, week]
    with pytest.raises(ConfigError, match=r"t\.jsonl: .* over every 1\.2096e\+06 s .*more than a week"):
        trace_generator(path, timed_replay=True, wrap=True)


def test_a_conversation_turn_beyond_ten_million_tokens_names_the_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Request logs refused lengths over the cap; a recorded conversation's turns were sent as they were."""
    from veeksha.runner.sessions import traces

    monkeypatch.setattr(traces, "MAX_TOKENS", 40)  # the cap, small enough for a quick test
    turn = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}]
    long = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "w " * 41}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"conversations": turn}, {"conversations": turn + long}])
    with pytest.raises(ConfigError, match=r"c\.jsonl line 2: the reply of turn 2 is 41 tokens, more than 40"):
        trace_generator(path)
    long_question = [{"from": "human", "value": "w " * 41}, {"from": "gpt", "value": "ok"}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"conversations": long_question}])
    with pytest.raises(ConfigError, match=r"c\.jsonl line 1: the user message of turn 1 is 41 tokens"):
        trace_generator(path)
    at_cap = [turn[0], {"from": "gpt", "value": "w " * 40}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"conversations": at_cap}])
    assert drain(trace_generator(path, wrap=False))[0].nodes[0].requested_output_tokens == 40


def test_an_error_found_after_sorting_by_time_names_the_record_s_own_line(tmp_path: Path) -> None:
    week = 7 * 24 * 3600
    path = _timed(tmp_path, 200.0 + week, 100.0, 150.0)  # line 1 is last in time
    with pytest.raises(ConfigError, match=r"t\.jsonl line 1: timed_replay offset 604900 s "):
        trace_generator(path, timed_replay=True, wrap=False)


def test_json_lines_with_crlf_blank_lines_and_a_leading_blank_array(tmp_path: Path) -> None:
    rows = [json.dumps(r) for r in REQUESTS]
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(f"{rows[0]}\r\n\r\n{rows[1]}\r\n{rows[2]}".encode())
    assert [s.nodes[0].target_prompt_tokens for s in drain(trace_generator(crlf, wrap=False))] == [12, 300, 1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(f"{rows[0]}\n\n{{oops\n")
    with pytest.raises(ConfigError, match=r"bad\.jsonl line 3: invalid JSON"):
        trace_generator(bad)
    array = tmp_path / "array.json"
    array.write_text("\n   \n" + json.dumps(REQUESTS))  # whitespace before the array
    gen = trace_generator(array, wrap=False)
    assert [s.nodes[0].target_prompt_tokens for s in drain(gen)] == [12, 300, 1]
    array.write_text(json.dumps([REQUESTS[0], {"input_length": 5}]))
    with pytest.raises(ConfigError, match=r"array\.json record 2: missing required field 'output_length'"):
        trace_generator(array)


def test_a_request_log_is_parsed_as_it_is_read_not_held_whole(tmp_path: Path) -> None:
    """Each driver loads the trace: holding every raw record beside the parsed ones peaked at ~10x the
    file's size (100k lines: 65 MB); parsing line by line peaks at what is kept, ~2.3x."""
    rows = [
        {"timestamp": i * 0.01, "input_length": 100 + i % 3000, "output_length": 50 + i % 400}
        for i in range(20_000)
    ]
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    tracemalloc.start()
    try:
        gen = trace_generator(path, timed_replay=True, wrap=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(gen.records) == 20_000
    assert peak < 4 * path.stat().st_size, (peak, path.stat().st_size)


def test_a_conversation_turn_is_refused_at_the_real_cap(tmp_path: Path) -> None:
    turn = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "字" * 10_000_001}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"conversations": turn}])
    with pytest.raises(
        ConfigError, match=r"line 1: the reply of turn 1 is 10,000,001 tokens, more than 10,000,000"
    ):
        trace_generator(path)


def test_a_trace_path_naming_a_directory_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "traces").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"session_generator\.path: 'traces' is a directory"):
        trace_generator("traces")
