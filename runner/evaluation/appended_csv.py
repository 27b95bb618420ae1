"""Reading, for evaluation, a CSV of numbers the run appends line by line (metrics/server_metrics.csv,
the live metrics/timeseries.csv).

`veeksha-run evaluate` must rebuild a crashed run from its directory alone, so what a crash or a stray
byte left in such a file never stops it: a cut-off last line is dropped (shared/csv_lines.py, as the
uploader drops it) and a value that is no number reads as missing (the uploader leaves such a row
out with a warning).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from veeksha.shared.csv_lines import complete_lines


def read_appended_frame(path: Path) -> pl.DataFrame:
    """The file's complete lines, every cell as text (an empty cell is null); an empty frame when the
    file is missing or empty. Read the numbers with `numbers`."""
    if not path.exists():
        return pl.DataFrame()
    data = complete_lines(path.read_bytes()).data
    if not data.strip():
        return pl.DataFrame()
    # Text, not inferred types: a cut or stray value would make its column text and a cast fail.
    # The writers never quote (no header has a comma), so a stray quote is a value, not a parse error.
    return pl.read_csv(
        data,
        infer_schema_length=0,
        quote_char=None,
        truncate_ragged_lines=True,
        encoding="utf8-lossy",
    )


def numbers(df: pl.DataFrame, name: str) -> pl.Series:
    """A column as floats; an empty cell, or one that is no number, is null."""
    return df[name].cast(pl.Float64, strict=False)


def unreadable(df: pl.DataFrame, name: str) -> pl.Series:
    """Per row: the cell holds text that is no number (an empty cell is not unreadable)."""
    return df[name].is_not_null() & numbers(df, name).is_null()
