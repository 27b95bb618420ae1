"""Request deadlines: one loop timer for all open requests; a request past its deadline has its task
cancelled, and the caller tells that from any other cancellation."""

from __future__ import annotations

import asyncio
import time

import uvloop
from veeksha.runner.driver.http.client import make_client
from veeksha.runner.driver.http.deadlines import RequestDeadlines
from veeksha.runner.driver.http.outcome import Outcome
from veeksha.shared.config import ClientConfig
from veeksha.shared.records import TIMEOUT

from tests.runner.driver.http.quirk_server import QuirkServer


async def request(deadlines: RequestDeadlines, seconds: float) -> str:
    """A request that takes `seconds`, reporting how it ended, as client.complete does."""
    key = deadlines.start()
    try:
        await asyncio.sleep(seconds)
        return "done"
    except asyncio.CancelledError:
        if not deadlines.expired(key):
            raise
        return "timed out"
    finally:
        deadlines.end(key)


def test_only_requests_past_their_deadline_are_timed_out() -> None:
    async def go() -> list[str]:
        d = RequestDeadlines(0.05)
        return await asyncio.gather(request(d, 0.01), request(d, 0.2), request(d, 0.02), request(d, 1.0))

    assert uvloop.run(go()) == ["done", "timed out", "done", "timed out"]


def test_a_timed_out_request_can_go_on_awaiting() -> None:
    # The deadline's cancellation is withdrawn: the task is not left cancelling.
    async def go() -> tuple[str, int]:
        d = RequestDeadlines(0.01)
        result = await request(d, 0.5)
        await asyncio.sleep(0.01)  # would raise CancelledError if the cancellation stayed pending
        return result, asyncio.current_task().cancelling()  # type: ignore[union-attr]

    assert uvloop.run(go()) == ("timed out", 0)


def test_a_shutdown_cancellation_is_not_taken_for_the_deadline() -> None:
    async def go() -> str:
        d = RequestDeadlines(60.0)
        task = asyncio.ensure_future(request(d, 10.0))
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "swallowed"

    assert uvloop.run(go()) == "cancelled"


def test_both_at_once_the_shutdown_wins() -> None:
    async def go() -> str:
        d = RequestDeadlines(0.01)
        task = asyncio.ensure_future(request(d, 10.0))
        await asyncio.sleep(0)  # the request starts
        time.sleep(0.02)  # past its deadline, without letting the loop run
        d._expire()  # the deadline's timer, then a shutdown, before the task runs again
        task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            return "cancelled"

    assert uvloop.run(go()) == "cancelled"


def test_one_timer_for_many_requests_and_nothing_kept_after_them() -> None:
    async def go() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        armed = 0
        call_at = loop.call_at

        def counting_call_at(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal armed
            armed += 1
            return call_at(*args, **kwargs)

        loop.call_at = counting_call_at  # type: ignore[method-assign]
        d = RequestDeadlines(60.0)
        replies = [loop.create_future() for _ in range(500)]

        async def one(reply: asyncio.Future[None]) -> None:
            key = d.start()
            try:
                await reply  # the response: no loop timer of its own
            finally:
                d.end(key)

        tasks = [asyncio.ensure_future(one(r)) for r in replies]
        await asyncio.sleep(0)
        for r in replies:
            r.set_result(None)
        await asyncio.gather(*tasks)
        d.close()
        return armed, len(d._open) + len(d._expired)

    assert asyncio.run(go()) == (1, 0)


def test_no_request_times_out_before_its_timeout_has_passed(quirks: QuirkServer) -> None:
    # The records' times are perf_counter's; uvloop's loop.time() is the time its pass began, in
    # whole ms. A deadline armed on it fired up to a pass early: 0.99973 s for a 1 s timeout.
    timeout = 0.02
    cfg = ClientConfig(api_base=quirks.base("slow_headers"), model="m", request_timeout=timeout)

    async def go() -> list[Outcome]:
        client = make_client(cfg, max_connections=40)

        async def one() -> Outcome:
            time.sleep(0.0003)  # a busy driver: the loop's clock goes stale within its pass
            return await client.request("hi", 8)

        try:
            outcomes: list[Outcome] = []
            for _ in range(5):
                outcomes += await asyncio.gather(*(one() for _ in range(40)))
            return outcomes
        finally:
            await client.aclose()

    outcomes = uvloop.run(go())
    assert {o.status for o in outcomes} == {TIMEOUT}
    waited = [o.completed_at - o.picked_up_at for o in outcomes]  # type: ignore[operator]
    assert min(waited) >= timeout, sorted(waited)[:5]
