"""What the driver sends, when, and what it records of it: the real Driver against the simulated server
over loopback (tests/runner/driver/in_process.py), with the server's exact timing (`precise`) so that
the truth each measurement must come back to is known."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from veeksha.runner.driver import dispatcher
from veeksha.runner.server_launcher import ServerHandle
from veeksha.runner.sessions.synthetic import SyntheticSessionGenerator
from veeksha.shared.records import CANCELLED, RUN_FAILED, SUCCESS

from tests.runner.driver.in_process import drive
from tests.runner.simserver.test_server import sim_server

SERVER_TTFC = 0.2  # the first chunk 200 ms after the request arrives
SERVER_ITL = 0.01


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    with sim_server(precise={"ttft": SERVER_TTFC, "itl": SERVER_ITL}) as handle:
        yield handle


def config(api_base: str, traffic: dict[str, Any], graph: dict[str, Any], **runtime: Any) -> dict[str, Any]:
    return {
        "client": {"api_base": api_base},
        "traffic_scheduler": traffic,
        "session_generator": {
            "type": "synthetic",
            "session_graph": graph,
            "channels": [{"type": "text", "body_length_generator": {"type": "fixed", "value": 20}}],
            "output_spec": {"text": {"output_length_generator": {"type": "fixed", "value": 10}}},
        },
        "runtime": {"benchmark_timeout": 30, **runtime},
    }


def fixed(value: float) -> dict[str, Any]:
    return {"type": "fixed", "value": value}


def rate(per_s: float, **extra: Any) -> dict[str, Any]:
    return {"type": "rate", "interval_generator": {"type": "fixed", "arrival_rate": per_s}, **extra}


SINGLE = {"type": "single_request"}


# ------------------------------------------------------------------ connections


def test_each_request_of_a_wide_layer_gets_a_connection_and_measures_only_the_server(
    server: ServerHandle,
) -> None:
    # One session at a time, but two requests of it in flight together (a layer of width 2): a pool
    # sized by sessions alone made the second wait for the first's connection, and that wait (the
    # first's whole end-to-end latency) was counted as the server's time to first chunk (0.49 s here:
    # the bound leaves a loaded machine room and still catches that).
    wide = {"type": "branching", "num_layers_generator": fixed(1), "layer_width_generator": fixed(2)}
    run = drive(config(server.api_base, rate(5, max_concurrent_sessions=1), wide, max_sessions=2))

    assert len(run.records) == 4 and {r["status"] for r in run.records} == {SUCCESS}
    for r in run.records:
        assert SERVER_TTFC <= r["ttfc"] < SERVER_TTFC + 0.2, r


# ------------------------------------------------------------------ the stop


def test_sessions_queued_behind_the_cap_at_the_stop_are_recorded_with_their_wait() -> None:
    # Sessions due every 100 ms, one at a time, each taking the server a second: by the timeout
    # (2.5 s) about 25 sessions were due and only 3 could be sent. The others waited in the queue;
    # their wait is the client's lateness and must show, not vanish with them.
    timeout = 2.5
    with sim_server(precise={"ttft": 1.0, "itl": SERVER_ITL}) as slow:
        cfg = config(slow.api_base, rate(10, max_concurrent_sessions=1), SINGLE, benchmark_timeout=timeout)
        cfg["session_generator"]["output_spec"]["text"]["output_length_generator"] = fixed(1)
        run = drive(cfg)

    stop = run.t0 + timeout
    sent = [r for r in run.records if r["client_picked_up_at"] is not None]
    queued = [r for r in run.records if r["client_picked_up_at"] is None]
    assert sorted(r["scheduler_ready_at"] - run.t0 for r in sent) == pytest.approx([0.1, 0.2, 0.3], abs=1e-6)
    # Every session due before the stop has its record: 0.1 s, 0.2 s, ... 2.4 s (2.5 s is not before it).
    due = sorted(r["scheduler_ready_at"] - run.t0 for r in run.records)
    assert due == pytest.approx([0.1 * k for k in range(1, 25)], abs=1e-6)
    for r in queued:
        assert r["status"] == CANCELLED and r["http_status"] is None and r["chunk_times"] == []
        assert "queued" in r["error_message"]
        # Due, never dispatched: not counted as sent (error rate, session rate), yet on record.
        assert r["scheduler_dispatched_at"] is None and r["dispatch_delay"] is None
    assert len(queued) == 21
    assert all(r["scheduler_ready_at"] < stop for r in queued)
    # The request log and the dispatch trace hold the same requests at the same times.
    by_id = {t["request_id"]: t for t in run.trace}
    assert sorted(by_id) == sorted(r["request_id"] for r in run.records)
    for r in run.records:
        line = by_id[r["request_id"]]
        assert line["ready_at"] == r["scheduler_ready_at"]
        assert line["dispatched_at"] == r["scheduler_dispatched_at"]


def test_a_cap_that_never_binds_records_no_queued_session_at_a_max_requests_stop(
    server: ServerHandle,
) -> None:
    # 20000 sessions/s, room for 10000 at once: the timer wakes several due sessions in one pass, and
    # the one whose request reaches max_requests stops dispatch before the others ran. They never
    # waited for a slot: they end as without a cap, with no record (not "queued" ones).
    cfg = config(server.api_base, rate(20000, max_concurrent_sessions=10000), SINGLE, max_requests=5)
    run = drive(cfg)

    assert len(run.records) == 5, [r["error_message"] for r in run.records]
    assert not any("queued" in (r["error_message"] or "") for r in run.records)


def test_a_driver_s_trace_ids_only_grow_when_a_max_requests_stop_drops_queued_sessions() -> None:
    # The recorder relies on it (recorder.py `last_traced`): the request that reaches the cap has its
    # trace line before those of the sessions the stop records as queued.
    with sim_server(precise={"ttft": 0.3, "itl": SERVER_ITL}) as slow:
        cfg = config(slow.api_base, rate(20, max_concurrent_sessions=1), SINGLE, max_requests=3)
        cfg["session_generator"]["output_spec"]["text"]["output_length_generator"] = fixed(1)
        run = drive(cfg)

    assert any("queued" in (r["error_message"] or "") for r in run.records)  # the case at hand
    ids = [t["request_id"] for t in run.trace]
    assert ids == sorted(set(ids)), ids


@pytest.mark.parametrize(
    "traffic", [rate(20), {"type": "concurrent", "target_concurrent_sessions": 1}], ids=["rate", "concurrent"]
)
def test_a_session_that_raises_ends_the_run_as_failed_with_the_error(
    server: ServerHandle, monkeypatch: pytest.MonkeyPatch, traffic: dict[str, Any]
) -> None:
    # A driver bug: neither left to escape the run (no DONE, records lost) nor swallowed.
    def broken(self: dispatcher.Driver, nodes: Any, node: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(dispatcher.Driver, "_payload", broken)
    run = drive(config(server.api_base, traffic, SINGLE, max_sessions=3))

    assert run.done["status"] == RUN_FAILED
    assert "RuntimeError: boom" in run.done["error"]


# ------------------------------------------------------------------ caps


def test_warmup_requests_come_in_addition_to_max_requests(server: ServerHandle) -> None:
    cfg = config(server.api_base, rate(50), SINGLE, max_requests=10, warmup_sessions=10)
    run = drive(cfg)

    assert len(run.measured()) == 10
    assert len(run.records) == 20
    assert run.done["stop_reason"] == "max_requests"


# ------------------------------------------------------------------ concurrent traffic


def test_the_next_session_of_a_worker_is_due_when_the_last_one_completed(
    server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No session is built ahead: each is made when its worker needs it, and making one takes 150 ms.
    # That time is the client's lateness, so it shows as the next session's dispatch delay.
    next_session = SyntheticSessionGenerator.next_session
    build_s = 0.15

    def slow_build(self: SyntheticSessionGenerator, build: bool = True) -> Any:
        time.sleep(build_s)
        return next_session(self, build)

    monkeypatch.setattr(SyntheticSessionGenerator, "next_session", slow_build)
    monkeypatch.setattr(dispatcher.Driver, "_buffer_target", lambda self: 1)
    monkeypatch.setattr(dispatcher.Driver, "_refill", lambda self: None)
    traffic = {"type": "concurrent", "target_concurrent_sessions": 1}
    run = drive(config(server.api_base, traffic, SINGLE, max_sessions=3))

    first, *later = sorted(run.records, key=lambda r: r["session_id"])
    assert first["dispatch_delay"] < build_s / 2  # built before the run started (not during it)
    for previous, r in zip([first, *later], later, strict=False):
        assert r["scheduler_ready_at"] == previous["client_completed_at"]
        assert r["dispatch_delay"] >= build_s
