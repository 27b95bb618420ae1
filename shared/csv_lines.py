"""The complete lines of a file the run appends line by line (metrics/server_metrics.csv, the live
metrics/timeseries.csv): both the evaluation and the uploader read such files after a crash, or after
a copy that was interrupted.

Such a file is not written atomically, so a run that stopped mid-write leaves a last line without its
newline: a cell short, or a number cut short. Even a cut line that still parses holds a wrong row
(`3,1.5` for `3,1.5,20.0`), so it is dropped whatever it holds, as the live follower never streams a
partial line. The header is no exception: every writer writes it with its newline, so a first line
without one is a header cut short (`elapsed_s,dispatched` of a longer one), and the file has no
complete line at all.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CompleteLines:
    data: bytes  # the file up to its last newline (the whole file when nothing was cut)
    cut_line: int | None  # the 1-based number of the cut-off last line that was dropped, else None


def complete_lines(raw: bytes) -> CompleteLines:
    """`raw` without a last line that lacks its newline (the header too, when it is the only line)."""
    end = raw.rfind(b"\n") + 1
    if end == len(raw):
        return CompleteLines(raw, None)
    return CompleteLines(raw[:end], raw[:end].count(b"\n") + 1)
