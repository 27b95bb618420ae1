"""Reading a run's two JSONL logs, in parallel when they are big.

The files are cut into blocks of whole lines (blocks.py: byte ranges found by seeking, never by reading the
whole file); each block is parsed by polars' NDJSON reader with an explicit schema. polars parses one
block on about one core, so for big files two worker processes (parse_worker.py) parse blocks side
by side, and the dispatch trace alongside, while this process stitches the results together: the
pooled tbc gaps go straight into one growing array, one copy per value. Small files are parsed here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from veeksha.runner.evaluation.blocks import (
    BLOCK_BYTES,
    Parsed,
    block_ranges,
    id_kinds,
    parse_records_block,
    parse_trace_file,
    records_schema,
)
from veeksha.runner.evaluation.frame import Records, assemble
from veeksha.runner.evaluation.parse_worker import parse_in_workers

PARALLEL_MIN_BYTES = 64 * 2**20  # smaller files: not worth starting worker processes
WORKERS = 2


# ------------------------------------------------------------------ public


def read_run_logs(
    records_path: Path,
    trace_path: Path | None,
    *,
    workers: int | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> tuple[Records, pl.DataFrame | None]:
    """(records, dispatch trace or None). workers: None = automatic, 0 = in this process.

    A missing or empty records file reads as no records.
    """
    kinds = id_kinds(records_path)
    trace_kinds = id_kinds(trace_path) if trace_path is not None else None
    ranges = block_ranges(records_path, block_bytes) if kinds is not None else []
    size = records_path.stat().st_size if kinds is not None else 0
    if workers is None:
        workers = WORKERS if size >= PARALLEL_MIN_BYTES and (os.cpu_count() or 1) > 1 else 0
    if workers > 0 and ranges:
        trace_task = (trace_path, trace_kinds) if trace_path is not None and trace_kinds else None
        results, finish_trace = parse_in_workers(workers, records_path, kinds or {}, ranges, trace_task)
        return _collect(results, size, kinds), finish_trace()
    results = (parse_records_block(records_path, off, ln, kinds or {}) for off, ln in ranges)
    records = _collect(results, size, kinds)
    trace = parse_trace_file(trace_path, trace_kinds) if trace_path is not None and trace_kinds else None
    return records, trace


def read_records(path: Path, *, workers: int | None = None, block_bytes: int = BLOCK_BYTES) -> Records:
    """Only the request records (a missing file reads as no records)."""
    return read_run_logs(path, None, workers=workers, block_bytes=block_bytes)[0]


def read_trace(path: Path) -> pl.DataFrame | None:
    """Only the dispatch trace, or None when there is none."""
    kinds = id_kinds(path)
    return parse_trace_file(path, kinds) if kinds else None


def _collect(results: Iterable[Parsed], size: int, kinds: dict[str, Any] | None) -> Records:
    frames, lengths, corrupt = [], [], 0
    gaps = _GrowingArray(size)
    for frame, block_gaps, block_lengths, block_bytes, skipped in results:
        gaps.extend(block_gaps, block_bytes)
        frames.append(frame)
        lengths.append(block_lengths)
        corrupt += skipped
    return assemble(frames, gaps.finish(), lengths, records_schema(kinds), corrupt)


class _GrowingArray:
    """A float64 array filled block by block with one copy per value.

    Sized from the first block's density (gaps per byte) times the file size; it grows in place
    when needed (numpy's resize is a realloc: for large arrays an mremap, no copy) and is trimmed
    at the end, so the pooled gaps never exist twice in memory.
    """

    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = total_bytes
        self.buf = np.empty(0, dtype=np.float64)
        self.n = 0

    def extend(self, values: np.ndarray, block_bytes: int) -> None:
        need = self.n + len(values)
        if need > len(self.buf):
            if len(self.buf) == 0 and block_bytes:
                guess = int(len(values) / block_bytes * self.total_bytes * 1.02) + 1024
            else:
                guess = int(len(self.buf) * 1.25) + 1024
            self.buf.resize(max(need, guess), refcheck=False)
        self.buf[self.n : need] = values
        self.n = need

    def finish(self) -> np.ndarray:
        self.buf.resize(self.n, refcheck=False)
        return self.buf
