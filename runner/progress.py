"""The live progress display: on a terminal one status line, redrawn at most 10 times a second and cut to
the terminal's width; otherwise a plain line every 5 s. Output tokens per second are measured over at
least 1 s.

And the console, which a run does not need (prepare_console, at the command's start): a standard stream
the caller closed (`veeksha-run ... >&-`) writes to /dev/null, and one that goes away mid-run (a
hangup: ssh dropped, terminal closed; a pipe's reader that exited: `| head -1`) drops what cannot be
written, so the run still drains and finishes its files (tolerate_lost_console)."""

from __future__ import annotations

import errno
import io
import os
import shutil
import sys
import threading
from typing import Any, TextIO

from veeksha.shared import records as r

PLAIN_EVERY_S = 5.0
# On a terminal. The recorder passes on every driver's every batch (one per driver per 20 ms tick):
# redrawn at each, the line flickered 100 times a second with two drivers.
REDRAW_EVERY_S = 0.1
# A write failing with one of these: nobody reads the console any more (a hung-up terminal: EIO; a
# closed pipe or socket: EPIPE, ECONNRESET; a terminal device that is gone: ENXIO).
CONSOLE_GONE = frozenset({errno.EIO, errno.EPIPE, errno.ECONNRESET, errno.ENXIO})

_hung_up = False
_console_lock = threading.RLock()  # the recorder's thread and a signal handler may both get here


# The standard streams by descriptor, and how each is opened when the caller closed it.
_STANDARD = ((0, "stdin", os.O_RDONLY, "r"), (1, "stdout", os.O_WRONLY, "w"), (2, "stderr", os.O_WRONLY, "w"))


def prepare_console() -> None:
    """At the command's start, before it opens anything: a standard stream the caller closed points
    at /dev/null (Python gives the process no sys.stdout then, and the first file the run opened would
    take descriptor 1, where its children's output would go), and stdout and stderr drop what cannot
    be written once their reader is gone (tolerate_lost_console): a lost console ends what is shown,
    never the run, and Python's flush of stdout at exit has nothing left to complain about."""
    for fd, name, flags, mode in _STANDARD:
        if _is_closed(fd):
            _to_devnull(fd, flags)
            if getattr(sys, name) is None:
                setattr(sys, name, open(fd, mode, closefd=False))  # (for the process's life)
    tolerate_lost_console()


def _is_closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def hang_up() -> bool:
    """A SIGHUP came: console writes become tolerant (tolerate_lost_console). True for the first only:
    one hangup may bring several (the kernel's to the session leader, the shell's to its jobs), and it
    is one stop, a drain, not a drain then a cancel."""
    global _hung_up
    first = not _hung_up
    _hung_up = True
    tolerate_lost_console()
    return first


def tolerate_lost_console() -> None:
    """From now on stdout and stderr drop what cannot be written because the console is gone (and
    write to /dev/null after that); what can be written is still shown. Idempotent."""
    with _console_lock:
        for name in ("stdout", "stderr"):
            _make_tolerant(name)


def _make_tolerant(name: str) -> None:
    stream = getattr(sys, name)
    if stream is None or isinstance(getattr(stream, "buffer", None), _TolerantConsole):
        return
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # not a file (captured by a test harness): left as it is
        return
    try:
        stream.flush()
    except OSError as e:  # (called from a signal handler: nothing is raised from here)
        if e.errno in CONSOLE_GONE:
            _to_devnull(fd)  # what it still holds goes there when it is flushed again
    except RuntimeError:  # the signal came inside a write to it: the write flushes it itself
        pass
    setattr(
        sys,
        name,
        io.TextIOWrapper(
            _TolerantConsole(fd),
            encoding=stream.encoding,
            errors=stream.errors,
            line_buffering=getattr(stream, "line_buffering", False),
            write_through=name == "stderr" or getattr(stream, "write_through", False),  # (python -u)
        ),
    )


def _to_devnull(fd: int, flags: int = os.O_WRONLY) -> None:
    devnull = os.open(os.devnull, flags)
    if devnull == fd:  # `fd` was closed: /dev/null took its place
        return
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class _TolerantConsole(io.BufferedIOBase):
    """A console file descriptor (not owned: never closed here) under a text stream, which buffers.
    Its first write failing because the console is gone points the descriptor at /dev/null; that
    write and the later ones succeed. Unbuffered on purpose: a Ctrl-C's KeyboardInterrupt may surface
    here just after a write returned (Python runs handlers between bytecodes), and a BufferedWriter
    then kept the bytes already out as unwritten, and wrote them again."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def write(self, b: Any) -> int:
        """All of `b`, as a buffered stream does (a pipe's write may be cut short by a signal)."""
        view = memoryview(b).cast("B")
        done = 0
        try:
            while done < len(view):
                done += os.write(self.fd, view[done:])
        except OSError as e:
            if e.errno not in CONSOLE_GONE:
                raise
            _to_devnull(self.fd)
        return len(view)


class Progress:
    def __init__(self, timeout_s: float, stream: TextIO | None = None) -> None:
        self._stream = stream  # None: sys.stdout at each write (replaced when the console is lost)
        shown = self.stream
        self.tty = shown is not None and shown.isatty()
        self.timeout_s = timeout_s
        self.every_s = REDRAW_EVERY_S if self.tty else PLAIN_EVERY_S
        self.last_shown = -PLAIN_EVERY_S
        self.last_tokens = 0
        self.last_t = 0.0
        self.tokens_per_s = 0.0
        # The latest counts not drawn yet (the terminal's line between redraws): drawn by close().
        self.pending: tuple[float, dict[str, Any]] | None = None

    @property
    def stream(self) -> TextIO | None:
        """None: no console at all (a process started with stdout closed, outside prepare_console)."""
        return self._stream or sys.stdout

    def _write(self, text: str) -> None:
        """A console gone unannounced (no SIGHUP: a pipe's reader that exited) ends the display, not
        the run: from then on stdout and stderr are tolerant (tolerate_lost_console)."""
        stream = self.stream
        if stream is None:
            return
        try:
            stream.write(text)
            stream.flush()
        except OSError as e:
            if e.errno not in CONSOLE_GONE or self._stream is not None:
                raise
            tolerate_lost_console()

    def update(self, elapsed: float, p: dict[str, Any]) -> None:
        """The run's counts `p` (records.PROGRESS_*) `elapsed` s after its start (negative before a
        start given with a margin, as Ray drivers get one: shown as 0)."""
        elapsed = max(0.0, elapsed)
        dt = elapsed - self.last_t
        if dt >= 1.0:
            self.tokens_per_s = (p.get(r.PROGRESS_OUTPUT_TOKENS, 0) - self.last_tokens) / dt
            self.last_tokens, self.last_t = p.get(r.PROGRESS_OUTPUT_TOKENS, 0), elapsed
        if elapsed - self.last_shown < self.every_s:
            self.pending = (elapsed, p)
            return
        self._draw(elapsed, p)

    def _draw(self, elapsed: float, p: dict[str, Any]) -> None:
        self.last_shown, self.pending = elapsed, None
        line = self._line(elapsed, p)
        if not self.tty:
            self._write(line + "\n")
            return
        # Cut to fit: a line that wraps is not cleared by the next redraw (\033[K clears only the
        # row the cursor is on), and each redraw left a line on screen. One column spare: a line
        # filling the last column wraps on some terminals.
        width = shutil.get_terminal_size().columns - 1
        self._write("\r\033[K" + line[: max(width, 1)])

    def _line(self, elapsed: float, p: dict[str, Any]) -> str:
        limit = f"/{self.timeout_s:.0f}s" if self.timeout_s > 0 else "s"
        # Cancelled at shutdown: not failed (the summary counts them apart); shown once there are any.
        cancelled = p.get(r.PROGRESS_CANCELLED, 0)
        cancelled_part = f" / {cancelled} cancelled" if cancelled else ""
        return (
            f"[{elapsed:6.1f}{limit}] sessions {p.get(r.PROGRESS_SESSIONS, 0)} started  requests "
            f"{p.get(r.PROGRESS_DISPATCHED, 0)} sent / {p.get(r.PROGRESS_COMPLETED, 0)} ok / "
            f"{p.get(r.PROGRESS_ERRORED, 0)} failed{cancelled_part}  "
            f"in flight {p.get(r.PROGRESS_IN_FLIGHT, 0)}  {self.tokens_per_s:,.0f} out tok/s"
        )

    def close(self) -> None:
        if not self.tty:
            return
        if self.pending is not None:  # the line left on screen has the run's last counts
            self._draw(*self.pending)
        self._write("\n")

    def note(self, text: str) -> None:
        """A line of its own that stays on screen (the live line is redrawn below it)."""
        self._write(("\r\033[K" if self.tty else "") + f"veeksha: {text}\n")
