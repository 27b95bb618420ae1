"""The live progress display: on a terminal one status line, redrawn at every batch (10 times a second);
otherwise a plain line every 5 s. Output tokens per second are measured over at least 1 s."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from veeksha.shared import records as r

PLAIN_EVERY_S = 5.0


class Progress:
    def __init__(self, timeout_s: float, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.timeout_s = timeout_s
        self.last_shown = -PLAIN_EVERY_S
        self.last_tokens = 0
        self.last_t = 0.0
        self.tokens_per_s = 0.0

    def update(self, elapsed: float, p: dict[str, Any]) -> None:
        dt = elapsed - self.last_t
        if dt >= 1.0:
            self.tokens_per_s = (p.get(r.PROGRESS_OUTPUT_TOKENS, 0) - self.last_tokens) / dt
            self.last_tokens, self.last_t = p.get(r.PROGRESS_OUTPUT_TOKENS, 0), elapsed
        if not self.tty and elapsed - self.last_shown < PLAIN_EVERY_S:
            return
        self.last_shown = elapsed
        limit = f"/{self.timeout_s:.0f}s" if self.timeout_s > 0 else "s"
        line = (
            f"[{elapsed:6.1f}{limit}] sessions {p.get(r.PROGRESS_SESSIONS, 0)} started  requests "
            f"{p.get(r.PROGRESS_DISPATCHED, 0)} sent / {p.get(r.PROGRESS_COMPLETED, 0)} ok / "
            f"{p.get(r.PROGRESS_ERRORED, 0)} failed  in flight {p.get(r.PROGRESS_IN_FLIGHT, 0)}  "
            f"{self.tokens_per_s:,.0f} out tok/s"
        )
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own that stays on screen (the live line is redrawn below it)."""
        self.stream.write(("\r\033[K" if self.tty else "") + f"veeksha: {text}\n")
        self.stream.flush()
