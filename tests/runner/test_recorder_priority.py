"""The recorder's receive loop runs at background priority (SCHED_IDLE on Linux), in a thread of its
own, so the caller's priority (evaluation, a sweep's next drivers) never changes."""

from __future__ import annotations

import os
import threading

import pytest
from veeksha.runner.recorder import at_low_priority


def policy_of_this_thread() -> int:
    return os.sched_getscheduler(threading.get_native_id())


def test_the_work_runs_at_background_priority_and_the_caller_keeps_its_own() -> None:
    before = policy_of_this_thread()
    seen: list[int] = []
    at_low_priority(lambda: seen.append(policy_of_this_thread()))
    assert seen == [os.SCHED_IDLE]
    assert before != os.SCHED_IDLE
    assert policy_of_this_thread() == before


def test_a_failure_of_the_work_reaches_the_caller() -> None:
    def fail() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        at_low_priority(fail)
