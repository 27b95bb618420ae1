"""The live progress line: what each count means, as a user reads it."""

from __future__ import annotations

import io
import os
import sys
from typing import Any

import pytest
from veeksha.runner import progress
from veeksha.runner.progress import Progress
from veeksha.shared import records as r


def test_the_line_says_sessions_started_and_requests_sent_ok_and_failed():
    out = io.StringIO()  # not a terminal: one plain line every 5 s
    progress = Progress(30, out)
    counts = {
        r.PROGRESS_SESSIONS: 7,  # counted when a session's first request is sent
        r.PROGRESS_DISPATCHED: 12,
        r.PROGRESS_COMPLETED: 9,
        r.PROGRESS_ERRORED: 1,
        r.PROGRESS_IN_FLIGHT: 2,
        r.PROGRESS_OUTPUT_TOKENS: 0,
    }
    progress.update(1.0, counts)
    progress.update(2.0, counts)  # within 5 s of the last line: nothing
    (line,) = out.getvalue().splitlines()
    assert line.startswith("[   1.0/30s] sessions 7 started  requests 12 sent / 9 ok / 1 failed  in flight 2")


class Terminal(io.StringIO):
    """What Progress writes to a terminal."""

    def isatty(self) -> bool:
        return True


def counts(**overrides: int) -> dict[str, int]:
    return {
        r.PROGRESS_SESSIONS: 40,
        r.PROGRESS_DISPATCHED: 120,
        r.PROGRESS_COMPLETED: 100,
        r.PROGRESS_ERRORED: 0,
        r.PROGRESS_IN_FLIGHT: 20,
        r.PROGRESS_OUTPUT_TOKENS: 0,
        **overrides,
    }


def redraws(screen: Terminal) -> list[str]:
    """The live line as drawn each time (each redraw starts with carriage return, clear line)."""
    return [line.rstrip("\n") for line in screen.getvalue().split("\r\033[K") if line]


def test_on_a_terminal_the_line_is_redrawn_ten_times_a_second_whatever_the_number_of_drivers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each driver sends a batch every 20 ms: with two, the line was redrawn 100 times a second.
    monkeypatch.setenv("COLUMNS", "200")
    screen = Terminal()
    progress = Progress(300, screen)
    for tick in range(100):  # 2 s of two drivers' batches
        for _driver in range(2):
            progress.update(tick * 0.02, counts())
    assert 15 <= len(redraws(screen)) <= 21  # at most every 0.1 s (a batch just short of it waits)


def test_on_a_narrow_terminal_the_line_is_cut_to_fit_and_never_wraps(monkeypatch: pytest.MonkeyPatch) -> None:
    # A line longer than the terminal wraps, the clear reaches only its last row, and every redraw
    # left a new line on screen (128 in 7 s); the "draining" note scrolled away.
    monkeypatch.setenv("COLUMNS", "80")
    screen = Terminal()
    progress = Progress(300, screen)
    progress.update(1.0, counts(**{r.PROGRESS_OUTPUT_TOKENS: 10**9}))
    (line,) = redraws(screen)
    assert len(line) == 79 and line.startswith("[   1.0/300s] sessions 40 started")


def test_off_a_terminal_the_plain_line_is_neither_cut_nor_more_frequent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    out = io.StringIO()
    progress = Progress(300, out)
    for tick in range(600):  # 12 s
        progress.update(tick * 0.02, counts())
    progress.close()
    lines = out.getvalue().splitlines()
    assert [line[:9] for line in lines] == ["[   0.0/3", "[   5.0/3", "[  10.0/3"]
    assert all(len(line) > 40 and line.endswith(" out tok/s") for line in lines)


def test_the_line_left_on_screen_at_the_end_has_the_last_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    screen = Terminal()
    progress = Progress(300, screen)
    progress.update(3.0, counts())
    progress.update(3.02, counts(**{r.PROGRESS_COMPLETED: 120, r.PROGRESS_IN_FLIGHT: 0}))  # not redrawn yet
    progress.close()
    assert "100 ok" in redraws(screen)[0]
    assert "120 ok / 0 failed  in flight 0" in redraws(screen)[-1]


def test_requests_cancelled_at_shutdown_are_counted_as_cancelled_not_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    screen = Terminal()
    Progress(300, screen).update(
        5.0, counts(**{r.PROGRESS_COMPLETED: 90, r.PROGRESS_CANCELLED: 30, r.PROGRESS_IN_FLIGHT: 0})
    )
    assert "requests 120 sent / 90 ok / 0 failed / 30 cancelled  in flight 0" in redraws(screen)[0]


def test_the_time_before_a_delayed_start_shows_as_zero_not_negative(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray drivers start 1 s after the recorder says go: the first second showed [  -0.9/300s].
    monkeypatch.setenv("COLUMNS", "200")
    screen = Terminal()
    Progress(300, screen).update(-0.9, counts())
    assert redraws(screen)[0].startswith("[   0.0/300s]")


# ---------------------------------------------------------------- the console stream (tolerate_lost_console)


def test_a_ctrl_c_just_after_a_line_is_out_does_not_write_that_line_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Python runs a signal's handler between bytecodes, so Ctrl-C's KeyboardInterrupt can surface in
    # the console's write just after its system call returned. The line is out; it was kept as unwritten
    # and written again by the next flush (a capacity search's "writing an offline W&B run" twice).
    read_fd, write_fd = os.pipe()
    try:
        monkeypatch.setattr(sys, "stderr", sys.stderr)  # (made tolerant too: put back after)
        monkeypatch.setattr(sys, "stdout", open(write_fd, "w", closefd=False))
        progress.tolerate_lost_console()
        real_write = os.write

        def written_then_interrupted(fd: int, data: Any) -> int:
            real_write(fd, data)
            monkeypatch.setattr(os, "write", real_write)  # the one Ctrl-C
            raise KeyboardInterrupt

        monkeypatch.setattr(os, "write", written_then_interrupted)
        with pytest.raises(KeyboardInterrupt):
            print("first", flush=True)
        print("second", flush=True)
        assert os.read(read_fd, 100) == b"first\nsecond\n"
    finally:
        os.close(read_fd)
        os.close(write_fd)
