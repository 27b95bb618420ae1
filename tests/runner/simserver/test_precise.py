"""Precise timing (server.precise): every stream on its own absolute schedule, and the server's own
lateness reported by GET /sim/stats. The server runs in its own process, as in test_server.py."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from veeksha.runner.driver.traffic import PreciseTimer
from veeksha.runner.simserver.engine import EngineRequest
from veeksha.runner.simserver.precise import Lateness, PreciseEngine
from veeksha.runner.simserver.server import start_simulated_server
from veeksha.shared.config import PreciseTiming, SimulatedServerConfig

from tests.runner.simserver.test_server import chat_body, content_chunks, root, sim_server, sse_events


def test_chunks_follow_ttft_then_itl_and_stats_report_lateness() -> None:
    with (
        sim_server(precise=PreciseTiming(ttft=0.04, itl=0.01), model="sim-model") as handle,
        httpx.Client(base_url=handle.api_base, timeout=10, trust_env=False) as client,
    ):
        body = chat_body(stream=True, max_tokens=6)
        times: list[float] = []
        start = time.perf_counter()
        with client.stream("POST", "/chat/completions", json=body) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: {") and '"content":" ' in line:
                    times.append(time.perf_counter() - start)
        assert len(times) == 6
        # Due at 40, 50, ... 90 ms after arrival; a loaded test machine may add a few ms each.
        assert 0.039 <= times[0] < 0.039 + 0.03
        assert 0.089 <= times[-1] < 0.089 + 0.03
        _, events = sse_events(client, "/chat/completions", body)  # the usual shape, [DONE] included
        assert len(content_chunks(events)) == 6 and events[-1] == "[DONE]"
        stats = httpx.get(f"{root(handle)}/sim/stats", timeout=10).json()
    assert stats["precise_chunks"] == 12 and stats["first_chunks"] == 2
    assert 0 <= stats["precise_lateness_p50_ms"] <= stats["precise_lateness_p99_ms"] <= 50
    assert stats["first_lateness_max_ms"] <= stats["precise_lateness_max_ms"]


def test_a_late_write_does_not_shift_the_chunks_after_it() -> None:
    """The schedule is absolute: a loop blocked for 30 ms makes the chunks due meanwhile late, and
    the next ones are on time again (the engine runs in this test's loop to block it at will)."""

    async def run() -> tuple[list[float], float]:
        server = await start_simulated_server(
            SimulatedServerConfig(port=0, precise=PreciseTiming(ttft=0.02, itl=0.01), model="m")
        )
        try:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            payload = b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":8,"stream":true}'
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%b"
                % (len(payload), payload)
            )
            start = time.perf_counter()
            await asyncio.sleep(0.035)  # let the first two chunks go out
            time.sleep(0.03)  # block the loop: chunks due at 40, 50 and 60 ms are written late
            data = b""
            while b"[DONE]" not in data:
                data += await reader.read(65536)
            end = time.perf_counter() - start
            writer.close()
            return [server.engine.lateness.max_s], end  # type: ignore[attr-defined]
        finally:
            await server.close()

    (max_late,), end = asyncio.run(run())
    assert max_late >= 0.01  # the blocked chunks were counted late
    # The last chunk (due at 20 + 7 * 10 = 90 ms) was not pushed back by the 30 ms block.
    assert end < 0.09 + 0.02


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

    def median_lateness_ms() -> float:
        with sim_server(precise=PreciseTiming(ttft=0.02, itl=0.003), model="sim-model") as handle:
            asyncio.run(streams(handle.api_base))
            stats = httpx.get(f"{root(handle)}/sim/stats", timeout=10).json()
        assert stats["first_chunks"] == 60
        return float(stats["first_lateness_p50_ms"])

    # Measured here: 0.03-0.07 ms idle or beside four CPU burners, 0.27 ms once and 0.8 ms once in
    # CI's full suite (four workers on two cores); 0.51-0.70 ms every time with the loop's timer
    # alone (the bug). So the best of up to three tries: a loaded moment passes the second.
    tries = []
    while len(tries) < 3 and (not tries or min(tries) >= 0.4):
        tries.append(median_lateness_ms())
    assert min(tries) < 0.4, tries


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
