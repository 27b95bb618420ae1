"""Run the real Driver in this process against a real server over loopback, and read what it shipped.

The recorder's side of the pipe is only decoded: records and trace lines come back as dicts of the raw
fields (perf_counter times, as the driver sends them), plus the two figures the tests here judge,
computed as the recorder computes them (runner/evaluation/request_metrics.py): `dispatch_delay`
(dispatched − ready) and `ttfc` (first content chunk − pick-up).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import Pipe
from typing import Any

import orjson
import uvloop
from veeksha.runner import ipc
from veeksha.runner.driver.dispatcher import FORWARDED_STOP, Driver, Placement
from veeksha.shared.config_loader import build_benchmark_config

START_MARGIN_S = 0.05  # as the recorder's (drivers.LOCAL_START_MARGIN_S)


@dataclass
class Driven:
    driver: Driver
    t0: float
    records: list[dict[str, Any]] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)
    done: dict[str, Any] = field(default_factory=dict)

    def measured(self) -> list[dict[str, Any]]:
        return [r for r in self.records if not r["is_warmup"]]


def drive(config: dict[str, Any]) -> Driven:
    """Run one Driver on `config` (a config mapping, as a YAML file would give it) to its end."""
    cfg = build_benchmark_config(config)
    receiver, sender = Pipe(duplex=False)
    go_receiver, go_sender = Pipe(duplex=False)
    messages: list[Any] = []
    start: list[float] = []

    def receive() -> None:
        """As the recorder: the common start once the driver is ready (set up, sessions built)."""
        try:
            while True:
                messages.append(orjson.loads(receiver.recv_bytes()))
                if messages[-1][0] == ipc.READY:
                    start.append(time.perf_counter() + START_MARGIN_S)
                    go_sender.send({ipc.GO_T0: start[0], ipc.GO_START_WALL: time.time() + START_MARGIN_S})
        except EOFError:
            pass

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    driver = Driver(cfg, sender, go_receiver, Placement())
    with _driver_settings_restored():
        uvloop.run(driver.run([]))
    reader.join(10)  # EOF: the driver closed its end
    receiver.close()
    go_sender.close()
    return _decoded(driver, start[0], messages)


def _decoded(driver: Driver, t0: float, messages: list[Any]) -> Driven:
    out = Driven(driver, t0)
    for kind, payload in messages:
        if kind == ipc.BATCH:
            out.records += [_record(raw) for raw in payload["records"]]
            out.trace += [dict(zip(ipc.RAW_TRACE_FIELDS, line, strict=True)) for line in payload["trace"]]
        elif kind == ipc.DONE:
            out.done = payload
    return out


def _record(raw: list[Any]) -> dict[str, Any]:
    rec = dict(zip(ipc.RAW_RECORD_FIELDS, raw, strict=True))
    ready, dispatched = rec["scheduler_ready_at"], rec["scheduler_dispatched_at"]
    rec["dispatch_delay"] = dispatched - ready if ready is not None and dispatched is not None else None
    chunks, sent = rec["chunk_times"], rec["client_picked_up_at"]
    rec["ttfc"] = chunks[0] - sent if chunks and sent is not None else None
    return rec


class _driver_settings_restored:
    """The Driver tunes the collector and installs signal handlers for its process: undo both."""

    def __enter__(self) -> None:
        self.thresholds = gc.get_threshold()
        self.handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, FORWARDED_STOP)}

    def __exit__(self, *exc: object) -> None:
        gc.unfreeze()
        gc.set_threshold(*self.thresholds)
        for s, handler in self.handlers.items():
            signal.signal(s, handler)
        asyncio.set_event_loop(None)
