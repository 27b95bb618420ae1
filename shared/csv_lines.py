"""The complete lines of a file the run appends line by line (metrics/server_metrics.csv, the live
metrics/timeseries.csv): both the evaluation and the uploader read such files after a crash.

Such a file is not written atomically, so a run that stopped mid-write leaves a last line without its
newline: a cell short, or a number cut short. Even a cut line that still parses holds a wrong row
(`3,1.5` for `3,1.5,20.0`), so it is dropped whatever it holds, as the live follower never streams a
partial line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CompleteLines:
    data: bytes  # the file up to its last newline (the whole file when nothing was cut)
    cut_line: int | None  # the 1-based number of the cut-off last line that was dropped, else None


def complete_lines(raw: bytes) -> CompleteLines:
    """`raw` without a last line that lacks its newline. A single line without one is kept: a header
    written alone (no row yet) has no newline to wait for."""
    end = raw.rfind(b"\n") + 1
    if not 0 < end < len(raw):
        return CompleteLines(raw, None)
    return CompleteLines(raw[:end], raw[:end].count(b"\n") + 1)
