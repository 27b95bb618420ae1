"""finalize_record: the per-request formulas of metrics.md, on hand-computed cases."""

from __future__ import annotations

import pytest
from veeksha.runner.evaluation.request_metrics import finalize_record
from veeksha.shared.records import REQUEST_RECORD_FIELDS

from ..helpers import only_run_dir, read_jsonl, run_cli
from .factory import raw_record

LATENCY = ("ttfc", "tbc", "tpot", "end_to_end_latency", "normalized_end_to_end_latency", "output_throughput")


def test_streaming_with_multi_token_chunks():
    # Sent at 1.002; 3 chunks carrying 2 tokens each; completion 1 ms after the last chunk.
    rec = finalize_record(
        raw_record(
            scheduler_ready_at=1.0,
            scheduler_dispatched_at=1.001,
            client_picked_up_at=1.002,
            chunk_times=[1.102, 1.152, 1.252],
            client_completed_at=1.253,
            num_output_tokens=6,
        )
    )
    assert rec["ttfc"] == 0.1  # first chunk − t_send
    assert rec["tbc"] == [0.05, 0.1]  # gaps between consecutive chunks
    assert rec["tpot"] == pytest.approx(0.15 / 5)  # (last − first chunk) / (tokens − 1)
    assert rec["end_to_end_latency"] == 0.251
    assert rec["normalized_end_to_end_latency"] == pytest.approx(0.251 / 6)
    assert rec["output_throughput"] == pytest.approx(6 / 0.251)
    assert rec["dispatch_delay"] == 0.001  # dispatched − ready


def test_record_has_the_contract_fields_in_order_and_no_chunk_times():
    raw = raw_record()
    before = dict(raw)
    rec = finalize_record(raw)
    assert tuple(rec) == REQUEST_RECORD_FIELDS
    assert raw == before  # the input is not modified


def test_non_streaming_is_one_chunk_at_completion():
    rec = finalize_record(
        raw_record(is_stream=False, chunk_times=[], client_picked_up_at=1.0, client_completed_at=3.5,
                   num_output_tokens=10)
    )  # fmt: skip
    assert rec["ttfc"] == rec["end_to_end_latency"] == 2.5
    assert rec["tbc"] == []
    assert rec["tpot"] is None  # one chunk: no decode speed to measure
    assert rec["normalized_end_to_end_latency"] == 0.25


def test_one_output_token_has_no_tpot():
    rec = finalize_record(raw_record(chunk_times=[1.5], client_completed_at=1.5, num_output_tokens=1))
    assert rec["tpot"] is None
    assert rec["tbc"] == []
    assert rec["ttfc"] == 0.5


def test_success_without_any_content_chunk_has_null_latencies_not_zero():
    rec = finalize_record(raw_record(chunk_times=[], num_output_tokens=0, client_completed_at=1.25))
    assert rec["ttfc"] is None and rec["tbc"] is None and rec["tpot"] is None
    assert rec["end_to_end_latency"] == 0.25
    assert rec["normalized_end_to_end_latency"] is None  # per token of zero tokens
    assert rec["output_throughput"] == 0.0  # a measured 0 tokens/s


@pytest.mark.parametrize("status", ["error", "timeout", "cancelled"])
def test_failed_requests_keep_timestamps_and_dispatch_delay_but_no_latency(status):
    rec = finalize_record(
        raw_record(status=status, error_type="http_error", scheduler_ready_at=1.0,
                   scheduler_dispatched_at=1.004, chunk_times=[1.5])
    )  # fmt: skip
    assert all(rec[name] is None for name in LATENCY)
    assert rec["dispatch_delay"] == 0.004
    assert rec["client_completed_at"] == 2.0 and rec["status"] == status


def test_cancelled_before_dispatch_has_no_dispatch_delay():
    rec = finalize_record(
        raw_record(status="cancelled", scheduler_ready_at=None, scheduler_dispatched_at=None,
                   client_picked_up_at=None, client_completed_at=None, chunk_times=[])
    )  # fmt: skip
    assert rec["dispatch_delay"] is None
    assert rec["result_processed_at"] == 2.0


def test_times_are_whole_nanoseconds_and_durations_exact_differences():
    # 0.3 − 0.1 is 0.19999999999999998 in floats; nanosecond rounding keeps the clean value.
    rec = finalize_record(
        raw_record(client_picked_up_at=0.1, chunk_times=[0.3, 0.7000000001234], client_completed_at=0.8)
    )
    assert rec["ttfc"] == 0.2
    assert rec["tbc"] == [0.4]  # 0.7000000001234 → 0.700000000 (ns)
    assert rec["client_picked_up_at"] == 0.1
    assert sum(rec["tbc"]) == pytest.approx(0.4)


def test_ttfa_and_tpot_answer_skip_the_reasoning():
    # 2 reasoning chunks (1 token each), then 3 answer chunks of 2 tokens each: 8 output tokens.
    rec = finalize_record(
        raw_record(
            client_picked_up_at=1.0,
            chunk_times=[1.1, 1.2, 1.5, 1.6, 1.8],
            first_answer_at=1.5,
            last_answer_at=1.8,
            num_answer_chunks=3,
            client_completed_at=1.8,
            num_output_tokens=8,
            num_reasoning_tokens=2,
        )
    )
    assert rec["ttfc"] == pytest.approx(0.1)  # the first chunk of any output
    assert rec["ttfa"] == pytest.approx(0.5)  # the first answer chunk
    assert rec["tpot"] == pytest.approx(0.7 / 7)  # all output chunks, all tokens
    assert rec["tpot_answer"] == pytest.approx(0.3 / 5)  # answer chunks, 6 answer tokens


def test_without_reasoning_ttfa_is_ttfc_and_tpot_answer_is_tpot():
    rec = finalize_record(
        raw_record(
            client_picked_up_at=1.0,
            chunk_times=[1.1, 1.2, 1.4],
            first_answer_at=1.1,
            last_answer_at=1.4,
            num_answer_chunks=3,
            client_completed_at=1.4,
            num_output_tokens=3,
            num_reasoning_tokens=0,
        )
    )
    assert rec["ttfa"] == rec["ttfc"] and rec["tpot_answer"] == rec["tpot"]


def test_an_answer_of_one_chunk_or_none_has_no_tpot_answer():
    one_chunk = finalize_record(
        raw_record(
            client_picked_up_at=1.0,
            chunk_times=[1.1, 1.2],
            first_answer_at=1.2,
            last_answer_at=1.2,
            num_answer_chunks=1,
            client_completed_at=1.2,
            num_output_tokens=5,
            num_reasoning_tokens=1,
        )
    )
    assert one_chunk["ttfa"] == pytest.approx(0.2) and one_chunk["tpot_answer"] is None
    only_reasoning = finalize_record(
        raw_record(client_picked_up_at=1.0, chunk_times=[1.1], client_completed_at=1.1, num_output_tokens=1)
    )
    assert only_reasoning["ttfa"] is None and only_reasoning["tpot_answer"] is None


def test_chunks_that_share_one_time_have_no_tpot_but_keep_their_gap():
    # The driver stamps every event of one socket read with one time: two chunks read together
    # arrived together, so they measure no decoding speed (tpot was once 0.0, passing any SLO).
    rec = finalize_record(
        raw_record(
            client_picked_up_at=1.0,
            chunk_times=[1.5, 1.5],
            first_answer_at=1.5,
            last_answer_at=1.5,
            num_answer_chunks=2,
            client_completed_at=1.5,
            num_output_tokens=4,
            num_reasoning_tokens=1,
        )
    )
    assert rec["tbc"] == [0.0]  # a measured gap of 0
    assert rec["tpot"] is None and rec["tpot_answer"] is None
    assert rec["ttfc"] == rec["ttfa"] == 0.5


def test_tpot_spans_first_to_last_chunk_even_when_some_share_a_time():
    rec = finalize_record(
        raw_record(
            client_picked_up_at=1.0,
            chunk_times=[1.5, 1.5, 1.8],
            first_answer_at=1.5,
            last_answer_at=1.8,
            num_answer_chunks=3,
            client_completed_at=1.8,
            num_output_tokens=4,
        )
    )
    assert rec["tbc"] == [0.0, pytest.approx(0.3)]
    assert rec["tpot"] == pytest.approx(0.3 / 3) and rec["tpot_answer"] == pytest.approx(0.3 / 3)


def test_a_real_run_whose_chunks_come_in_one_read_records_no_tpot(tmp_path):
    # The simulated server sends a reasoning chunk and an answer chunk back to back: one socket
    # read, one time for both.
    args = [
        "--output_dir", "out", "--server.type", "simulated", "--server.tokens_per_chunk", "2",
        "--server.reasoning_tokens", "1", "--session_generator.session_graph", "{type: single_request}",
        "--session_generator.output_spec", "{text: {output_length_generator: {type: fixed, value: 2}}}",
        "--traffic_scheduler.interval_generator.arrival_rate", "5", "--runtime.benchmark_timeout", "2",
    ]  # fmt: skip
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ok = [r for r in read_jsonl(only_run_dir(tmp_path / "out").request_records) if r["status"] == "success"]
    together = [r for r in ok if r["tbc"] and not any(r["tbc"])]
    assert together, [r["tbc"] for r in ok]
    assert all(r["tpot"] is None and r["tpot_answer"] is None for r in together)
