"""The driver leaves no reference cycle per request.

The driver tunes the garbage collector to run rarely (a collection is a stall on the timing path), so
anything a request leaves in a reference cycle stays in memory, with its reply text, until a rare full
collection: a long run grows without bound. Here the real Driver sends requests through the real
client to the simulated server over loopback, with gc.DEBUG_SAVEALL on, so that every object a
collection finds unreachable is kept in gc.garbage for us to see. Nothing may land there.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from multiprocessing import Pipe
from typing import Any

import pytest
import uvloop
from veeksha.runner import ipc
from veeksha.runner.driver.dispatcher import FORWARDED_STOP, Driver, Placement
from veeksha.runner.server_launcher import ServerHandle, start_server
from veeksha.shared.config_loader import build_benchmark_config

REQUESTS = 60


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    """A fast simulated server that answers 20 % of requests with an error."""
    cfg = build_benchmark_config(
        {
            "server": {
                "type": "simulated",
                "decode_step_base": 0.002,
                "decode_step_per_seq": 0.0,
                "max_batch_size": 512,
                "error_rate": 0.2,
            }
        }
    )
    with start_server(cfg.server) as handle:
        yield handle


def run_driver(api_base: str, client: dict[str, Any], turns: int) -> Driver:
    """Run REQUESTS requests through a Driver in this process; the recorder's end is only drained."""
    graph = {"type": "linear", "num_request_generator": {"type": "fixed", "value": turns}}
    cfg = build_benchmark_config(
        {
            "client": {"type": "openai_chat_completions", "api_base": api_base, **client},
            "traffic_scheduler": {
                "type": "rate",
                "interval_generator": {"type": "poisson", "arrival_rate": 300},
            },
            "runtime": {"max_requests": REQUESTS, "benchmark_timeout": 30},
            "session_generator": {
                "type": "synthetic",
                "session_graph": graph if turns > 1 else {"type": "single_request"},
                "channels": [{"type": "text", "body_length_generator": {"type": "fixed", "value": 30}}],
                "output_spec": {"text": {"output_length_generator": {"type": "fixed", "value": 16}}},
            },
        }
    )
    receiver, sender = Pipe(duplex=False)
    go_receiver, go_sender = Pipe(duplex=False)
    go_sender.send({ipc.GO_T0: time.perf_counter(), ipc.GO_START_WALL: time.time()})  # start at once

    def drain() -> None:
        try:
            while True:
                receiver.recv_bytes()
        except EOFError:
            pass

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    driver = Driver(cfg, sender, go_receiver, Placement())
    uvloop.run(driver.run([]))
    drainer.join(5)  # EOF: the driver closed its end
    receiver.close()
    return driver


@pytest.fixture
def saved_garbage() -> Iterator[list[Any]]:
    """gc.garbage while DEBUG_SAVEALL is on; the collector settings the Driver changes are restored."""
    thresholds = gc.get_threshold()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, FORWARDED_STOP)}
    # The test process's own garbage is not the driver's: collect until nothing is left (a finalizer
    # run by one collection, e.g. a transport earlier tests dropped, can free more for the next).
    for _ in range(5):
        if not gc.collect():
            break
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        for s, handler in handlers.items():
            signal.signal(s, handler)
        asyncio.set_event_loop(None)


@pytest.mark.parametrize(
    ("client", "turns"),
    [
        pytest.param({}, 3, id="streamed-3-turn-chats"),
        pytest.param({"stream": False}, 1, id="not-streamed"),
        # A server that closes every connection: one connection per request.
        pytest.param({"headers": {"Connection": "close"}}, 1, id="connection-close"),
        # 16 tokens take 32 ms: every request times out and its connection is aborted.
        pytest.param({"request_timeout": 0.01}, 1, id="timeouts"),
    ],
)
def test_requests_leave_no_reference_cycles(
    server: ServerHandle, saved_garbage: list[Any], client: dict[str, Any], turns: int
) -> None:
    driver = run_driver(server.api_base, client, turns)
    assert driver.requests_dispatched == REQUESTS
    if "request_timeout" not in client:
        assert driver.requests_completed > 0
    gc.collect()
    kinds = Counter(type(o).__qualname__ for o in saved_garbage)
    assert not saved_garbage, f"objects left in reference cycles: {kinds.most_common(10)}"
