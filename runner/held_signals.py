"""Stop signals held over a few lines that must not be cut: a child process started but not yet
owned by anything that would stop it (runner/server_launcher.py: SIGINT, SIGTERM and SIGHUP are
noted while held, then handed to their own handlers), and our own children that must begin with
Ctrl-C blocked until they have set their own disposition (sigint_blocked)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, and what the CLI maps onto it


class HeldSignals:
    """Within the `with`: SIGINT, SIGTERM and SIGHUP are noted, not acted on; release() (or leaving the
    `with`) puts the previous handlers back and hands them what came meanwhile. Handlers, not
    pthread_sigmask: a blocked mask would be inherited across exec, and the server would ignore its
    SIGTERM. Only the main thread can set handlers, and only it runs them: elsewhere, a no-op."""

    def __init__(self) -> None:
        self._previous: dict[int, signal.Handlers | Callable[[int, Any], Any] | int] = {}
        self._came: list[int] = []
        self._holding = False

    def __enter__(self) -> HeldSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._holding = True
        try:
            for sig in _HELD:
                previous = signal.getsignal(sig)
                # An ignored signal stays so (the server inherits SIG_IGN: nohup); None: set outside
                # Python, which signal.signal could not put back.
                if previous is not None and previous != signal.SIG_IGN:
                    self._previous[sig] = previous
                    signal.signal(sig, self._on_signal)
        except BaseException:  # a SIGTERM's handler raised mid-way: SIGINT must not stay held for good
            self.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._holding:
            if signum not in self._came:
                self._came.append(signum)
            return
        self._pass_on(signum)  # one that came while release() put the handlers back

    def _pass_on(self, signum: int) -> None:
        """To the handler it was meant for: SIG_DFL included (raise_signal runs a Python handler now)."""
        signal.signal(signum, self._previous[signum])
        signal.raise_signal(signum)

    def release(self) -> None:
        if not self._holding:
            return
        self._holding = False
        try:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
        finally:  # a second Ctrl-C, passed on mid-way, raised: the rest go back too
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
        came, self._came = self._came, []
        for sig in came:
            self._pass_on(sig)


@contextmanager
def sigint_blocked() -> Iterator[None]:
    """Children started inside begin with SIGINT blocked (the mask is kept through fork and exec) until
    they set their own handler and unblock it (driver_main, parse_worker.main): the interpreter's start
    and the imports take a good part of a second, in which a terminal's Ctrl-C printed a traceback
    (a driver then counted as failed). Blocked, not ignored: a Ctrl-C meanwhile waits for the child's
    own disposition (a driver's handler; a parse worker ignores it), and ours gets it when the block
    ends."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
