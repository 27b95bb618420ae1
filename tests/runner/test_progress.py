"""The live progress line: what each count means, as a user reads it."""

from __future__ import annotations

import io

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
