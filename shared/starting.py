"""A command's first lines. Its imports (click, httpx, polars, pydantic) take a few hundred ms, and a
stop that came meanwhile ended it unlike one that comes later: a Ctrl-C with a KeyboardInterrupt
traceback from inside some import, a SIGTERM or SIGHUP with no word at all (exit -15, -1). Under
`starting`, any stop the command's own handling does not take ends it as a later one does: one
line, exit 130. The command sets its own handlers once it runs; these only cover its start."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

INTERRUPTED_EXIT = 130  # the shell's convention for a process ended by SIGINT


def _as_ctrl_c(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def starting(prog: str) -> Iterator[None]:
    signal.signal(signal.SIGTERM, _as_ctrl_c)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under nohup, a hangup stays ignored
        signal.signal(signal.SIGHUP, _as_ctrl_c)
    try:
        yield
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED_EXIT)
