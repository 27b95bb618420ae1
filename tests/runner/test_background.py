"""Background priority: SCHED_IDLE for the calling thread only (a waking driver preempts it at once)."""

from __future__ import annotations

import os
import threading

from veeksha.runner.background import to_background


def test_only_the_calling_thread_goes_to_sched_idle() -> None:
    got: list[tuple[str, int]] = []

    def work() -> None:
        got.append((to_background(), os.sched_getscheduler(threading.get_native_id())))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert got == [("idle", os.SCHED_IDLE)]
    assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER
