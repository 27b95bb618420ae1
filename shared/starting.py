"""A command's first lines. Its imports (click, httpx, polars, pydantic) take a few hundred ms, and a
stop that came meanwhile ended it unlike one that comes later: a Ctrl-C with a KeyboardInterrupt
traceback from inside some import, a SIGTERM or SIGHUP with no word at all (exit -15, -1). Under
`starting`, any stop the command's own handling does not take ends it as a later one does: one
line, exit 130. The command sets its handlers again once it runs (stop_like_ctrl_c, with its own
SIGHUP handling where it has one)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from veeksha.shared.errors import Terminated

INTERRUPTED_EXIT = 130  # the shell's convention for a process ended by SIGINT


def raise_terminated(signum: int, frame: object) -> None:
    """SIGTERM's handler. Terminated is a KeyboardInterrupt told apart: it may have reached this
    process alone, so a child we wait for is told too (runner/benchmark.py)."""
    raise Terminated


def _raise_ctrl_c(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_like_ctrl_c(on_hangup: Callable[[int, object], None] = _raise_ctrl_c) -> None:
    """SIGTERM (`kill PID`, a job scheduler, a supervisor) and SIGHUP (ssh dropped, a terminal closed)
    stop us as Ctrl-C does, by default: by their default action we died at once, with no final
    status written and children left holding locks. A SIGHUP ignored by whoever started us (nohup)
    stays so. Main thread only (signal handlers)."""
    signal.signal(signal.SIGTERM, raise_terminated)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, on_hangup)


@contextmanager
def starting(prog: str) -> Iterator[None]:
    stop_like_ctrl_c()
    try:
        yield
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED_EXIT)
