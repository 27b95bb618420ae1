"""Precise timing (server.precise): every stream on its own absolute schedule, and the server's own
lateness reported by GET /sim/stats. The server runs in its own process, as in test_server.py."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import orjson
import pytest
from veeksha.runner.driver.traffic import PreciseTimer
from veeksha.runner.server_launcher import ServerHandle
from veeksha.runner.simserver.engine import EngineRequest
from veeksha.runner.simserver.precise import Lateness, PreciseEngine
from veeksha.runner.simserver.server import start_simulated_server
from veeksha.shared.config import PreciseTiming, SimulatedServerConfig
from veeksha.shared.records import VLLM_RUNNING

from tests.runner.simserver.test_server import chat_body, content_chunks, root, sim_server, sse_events

TTFT, ITL = 0.2, 0.1  # long enough that a loaded machine's few ms (or tens) do not blur them


def one_timed_stream() -> tuple[list[float], dict]:
    """On a fresh server: when each of 6 content chunks reached the client (from before sending) and
    the server's stats after that request and a second one."""
    with (
        sim_server(precise=PreciseTiming(ttft=TTFT, itl=ITL), model="sim-model") as handle,
        httpx.Client(base_url=handle.api_base, timeout=10, trust_env=False) as client,
    ):
        body = chat_body(stream=True, max_tokens=6)
        times: list[float] = []
        start = time.perf_counter()
        with client.stream("POST", "/chat/completions", json=body) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: {") and '"content":" ' in line:
                    times.append(time.perf_counter() - start)
        _, events = sse_events(client, "/chat/completions", body)  # the usual shape, [DONE] included
        assert len(content_chunks(events)) == 6 and events[-1] == "[DONE]"
        return times, httpx.get(f"{root(handle)}/sim/stats", timeout=10).json()


def test_chunks_follow_ttft_then_itl_and_stats_report_lateness() -> None:
    def on_time(times: list[float], stats: dict) -> bool:
        # Chunk k is due at TTFT + k * ITL; a machine busy enough to add half an ITL is retried.
        late = [t - (TTFT + k * ITL) for k, t in enumerate(times)]
        return max(late) < ITL / 2 and stats["precise_lateness_p99_ms"] <= 50

    tries: list[tuple[list[float], dict]] = []
    while len(tries) < 3 and not (tries and on_time(*tries[-1])):
        times, stats = one_timed_stream()
        assert len(times) == 6
        # Never early, however busy the machine: the client's clock starts before the request is sent.
        assert all(t >= TTFT + k * ITL - 1e-3 for k, t in enumerate(times)), times
        assert stats["precise_chunks"] == 12 and stats["first_chunks"] == 2
        assert 0 <= stats["precise_lateness_p50_ms"] <= stats["precise_lateness_p99_ms"]
        assert stats["first_lateness_max_ms"] <= stats["precise_lateness_max_ms"]
        tries.append((times, stats))
    assert on_time(*tries[-1]), tries


def test_a_late_write_does_not_shift_the_chunks_after_it() -> None:
    """The schedule is absolute: a loop blocked for half a second makes the chunks due meanwhile late,
    and the next ones are on time again (the engine runs in this test's loop to block it at will)."""

    async def run() -> tuple[list[float], float]:
        server = await start_simulated_server(
            SimulatedServerConfig(port=0, precise=PreciseTiming(ttft=TTFT, itl=ITL), model="m")
        )
        try:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            payload = b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":8,"stream":true}'
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%b"
                % (len(payload), payload)
            )
            start = time.perf_counter()
            await asyncio.sleep(0.25)  # let the first chunk (due at 0.2 s) go out
            time.sleep(0.5)  # block the loop: chunks due at 0.3 ... 0.7 s are written late, at 0.75 s
            data = b""
            while b"[DONE]" not in data:
                data += await reader.read(65536)
            end = time.perf_counter() - start
            writer.close()
            return [server.engine.lateness.max_s], end  # type: ignore[attr-defined]
        finally:
            await server.close()

    (max_late,), end = asyncio.run(run())
    assert max_late >= 0.4  # the blocked chunks were counted late (the first of them by 0.45 s)
    last_due = TTFT + 7 * ITL  # 0.9 s
    assert end >= last_due - 1e-3
    # Had each late write pushed the next chunk back (due one ITL after it), the last chunk would go
    # out at 0.75 + 6 * 0.1 = 1.35 s; a busy machine gets a quarter second before that is suspected.
    assert end < last_due + 0.25


def test_lateness_quantiles_are_bucket_edges() -> None:
    lateness = Lateness()
    for ms in (0.0, 0.5, 1.0, 2.0, 40.0):
        lateness.add(ms / 1e3)
    stats = lateness.stats("x_")
    assert stats["x_chunks"] == 5
    assert abs(stats["x_lateness_p50_ms"] - 1.01) < 1e-9
    assert stats["x_lateness_max_ms"] == 40.0


def test_first_chunks_are_written_at_their_exact_due_time() -> None:
    # They are the TTFT truth. With the loop's millisecond timer alone, a first chunk falling due
    # between the wake-ups of other streams' chunks waited for the next one: 0.5 ms late at the
    # median, 1.9 ms at p99 at 800 requests/s. Their own timerfd wake-up is on time.
    async def streams(api_base: str) -> None:
        async with httpx.AsyncClient(base_url=api_base, timeout=10, trust_env=False) as client:

            async def one(delay: float) -> None:
                await asyncio.sleep(delay)
                body = chat_body(stream=True, max_tokens=10)
                async with client.stream("POST", "/chat/completions", json=body) as response:
                    await response.aread()

            await asyncio.gather(*(one(0.0013 * k) for k in range(60)))

    def median_lateness_ms() -> tuple[float, float]:
        """(first chunks', all chunks') median lateness, in ms, of one run on a fresh server."""
        with sim_server(precise=PreciseTiming(ttft=0.02, itl=0.003), model="sim-model") as handle:
            asyncio.run(streams(handle.api_base))
            stats = httpx.get(f"{root(handle)}/sim/stats", timeout=10).json()
        assert stats["first_chunks"] == 60 and stats["precise_chunks"] == 600
        return float(stats["first_lateness_p50_ms"]), float(stats["precise_lateness_p50_ms"])

    def exact(first: float, every: float) -> bool:
        # Against the same run's other chunks (nine in ten of them later chunks, on the millisecond
        # timer): a loaded machine delays both. Measured beside other test runs (load 5 on 2 cores):
        # 0.09-0.25 ms against 0.61-0.79 ms with their own wake-up, and 0.52-0.94 ms against
        # 0.62-0.78 ms with the loop's timer alone (the bug). An absolute bound (0.4 ms) once failed
        # in CI's full suite at 0.8 ms.
        return first < every / 2

    # The best of up to three tries: a loaded moment passes the next one.
    tries = []
    while len(tries) < 3 and not (tries and exact(*tries[-1])):
        tries.append(median_lateness_ms())
    assert exact(*tries[-1]), tries


@pytest.mark.timeout(10)
def test_a_backlog_of_due_first_chunks_is_written_in_passes_not_spun_on() -> None:
    """The timer's caller passes the time it looked; after slow callbacks that time is stale. A pass
    that budgeted from it ended before its first write and re-armed for the same due chunk: the
    server spun, allocating, until the kernel killed it (24 GB, seen at 800 requests/s)."""
    written: list[int] = []

    class SlowSink:
        def on_tokens(self, start: int, end: int, finished: bool) -> None:
            time.sleep(0.0005)  # 200 of these outlast one pass of the engine
            written.append(start)

    async def run() -> None:
        cfg = SimulatedServerConfig(port=0, precise=PreciseTiming(ttft=0.0, itl=10.0), model="m")
        engine = PreciseEngine(cfg, asyncio.get_running_loop())
        for _ in range(200):
            engine.submit(EngineRequest(10, 2, "length", 0, SlowSink()))
        looked_at = time.perf_counter()
        time.sleep(0.01)  # callbacks before ours took 10 ms
        timer = PreciseTimer.of_running_loop()
        assert timer is not None
        timer.fire_due(looked_at)  # returns (the bug looped here for ever)
        while len(written) < 200:  # the rest, in passes between reads
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert written == [0] * 200


def running_in_metrics(handle: ServerHandle) -> float:
    """vllm:num_requests_running as GET /metrics reports it."""
    text = httpx.get(f"{root(handle)}/metrics", timeout=10, trust_env=False).text
    (line,) = [line for line in text.splitlines() if line.startswith(VLLM_RUNNING + "{")]
    return float(line.rsplit(" ", 1)[1])


def test_streams_whose_clients_left_are_no_longer_counted_running() -> None:
    # They were counted until their first chunk fell due (3 s here): a benchmark that cancels its
    # requests saw the server busy with nobody.
    body = orjson.dumps(chat_body(stream=True, max_tokens=5))
    request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%b" % (
        len(body),
        body,
    )
    with sim_server(precise=PreciseTiming(ttft=3.0, itl=0.01), model="sim-model") as handle:
        url = httpx.URL(handle.api_base)
        clients = [socket.create_connection((url.host, url.port), timeout=5) for _ in range(100)]
        try:
            for sock in clients:
                sock.sendall(request)
            deadline = time.monotonic() + 2
            while running_in_metrics(handle) < 100 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert running_in_metrics(handle) == 100
        finally:
            for sock in clients:
                sock.close()
        deadline = time.monotonic() + 2
        while running_in_metrics(handle) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert running_in_metrics(handle) == 0
        assert httpx.get(f"{root(handle)}/sim/stats", timeout=10).json()["running"] == 0
