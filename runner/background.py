"""Background priority for the threads that share a core with the drivers (the recorder's receive loop,
the server-metrics scraper): their work can wait milliseconds, the drivers' wake-ups are the measurement.

SCHED_IDLE, where there is one (Linux), not just nice 19: with the kernel's EEVDF scheduler a running
task keeps the CPU until its slice ends (about 1.5 ms on two cores) even against a waking task of
higher weight, so a nice-19 recorder still delayed a waking driver. A SCHED_IDLE task is preempted at
once by any normal one. Lowering one's own policy needs no privileges; the thread never needs it back
(it ends with its work).
"""

from __future__ import annotations

import contextlib
import os
import threading

LOWEST_NICE = 19


def to_background() -> str:
    """Lower the calling thread to background priority; returns what it got ("idle", "nice" or "")."""
    tid = threading.get_native_id()
    idle = getattr(os, "SCHED_IDLE", None)
    if idle is not None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(tid, idle, os.sched_param(0))
            return "idle"
    with contextlib.suppress(OSError, AttributeError):  # not allowed, or no priorities: as it is
        os.setpriority(os.PRIO_PROCESS, tid, LOWEST_NICE)
        return "nice"
    return ""
