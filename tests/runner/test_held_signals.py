"""Stop signals held while a child is started and not yet owned (runner/held_signals.py)."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from veeksha.runner.held_signals import HeldSignals


def test_a_signal_while_held_reaches_its_own_handler_on_release() -> None:
    came: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: came.append(signum))
    try:
        with HeldSignals():
            signal.raise_signal(signal.SIGTERM)
            assert came == []  # noted, not acted on
        assert came == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_ignored_signal_stays_ignored_while_held() -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup: the child inherits SIG_IGN
    try:
        with HeldSignals():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_stop_signal_as_the_hold_begins_leaves_no_signal_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGTERM whose handler raised while the hold was being set up (SIGINT already swapped): every
    later Ctrl-C of the process was noted and never acted on."""
    real_getsignal = signal.getsignal

    def getsignal(sig: int) -> Any:
        if sig == signal.SIGTERM:
            raise KeyboardInterrupt  # the CLI's SIGTERM handler, run right here
        return real_getsignal(sig)

    before = real_getsignal(signal.SIGINT)
    monkeypatch.setattr(signal, "getsignal", getsignal)
    with pytest.raises(KeyboardInterrupt), HeldSignals():
        pass
    assert real_getsignal(signal.SIGINT) is before
