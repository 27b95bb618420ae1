"""The recorder's receive loop runs at a lower priority than the drivers, in a thread of its own, so
the caller's priority (evaluation, a sweep's next drivers) never changes."""

from __future__ import annotations

import os
import threading

import pytest
from veeksha.runner.recorder import RECORDING_NICE, at_low_priority


def nice_of_this_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_the_work_runs_at_a_lower_priority_and_the_caller_keeps_its_own() -> None:
    before = nice_of_this_thread()
    seen: list[int] = []
    at_low_priority(lambda: seen.append(nice_of_this_thread()))
    assert seen == [min(before + RECORDING_NICE, 19)]
    assert seen[0] > before or before == 19
    assert nice_of_this_thread() == before


def test_a_failure_of_the_work_reaches_the_caller() -> None:
    def fail() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        at_low_priority(fail)
