"""The work of one parse task: cutting a JSONL log into blocks of whole lines, and parsing a block of
request records or the whole dispatch trace with an explicit schema. reading.py runs these tasks in
this process or hands them to parse_worker.py's processes; both import them from here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import polars as pl
from veeksha.runner.evaluation.frame import (
    ID_FIELDS,
    first_record,
    parse_block,
    parse_trace_block,
    record_schema,
    split_tbc,
)

BLOCK_BYTES = 16 * 2**20  # below glibc's mmap threshold cap: read buffers are reused, not re-faulted

# frame, gaps, gaps per row, block bytes, corrupt lines skipped
Parsed = tuple[pl.DataFrame, np.ndarray, np.ndarray, int, int]


def block_ranges(path: Path, block_bytes: int = BLOCK_BYTES) -> list[tuple[int, int]]:
    """(offset, length) of blocks of whole lines covering the file (the last may end mid-line)."""
    size = path.stat().st_size
    starts = [0]
    with path.open("rb") as f:
        pos = block_bytes
        while pos < size:
            f.seek(pos)
            end = pos + len(f.readline())  # the end of the line holding `pos`
            if end >= size:
                break
            starts.append(end)
            pos = end + block_bytes
    return [(a, b - a) for a, b in zip(starts, [*starts[1:], size], strict=True) if b > a]


def read_block(path: Path, offset: int, length: int) -> bytes:
    """A block's bytes; a final line without newline is kept only if it parses (else: torn)."""
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(length)
    if not data or data.endswith(b"\n"):
        return data
    cut = data.rfind(b"\n")
    try:
        orjson.loads(data[cut + 1 :])
    except orjson.JSONDecodeError:
        return data[: cut + 1]  # torn by a crash mid-append
    return data + b"\n"


# ------------------------------------------------------------------ ids and schemas


def id_kinds(path: Path) -> dict[str, str] | None:
    """ "int" or "str" per id field, from the file's first record; None when it has none."""
    first = first_record(path) if path.exists() else None
    if first is None:
        return None
    return {k: "int" if isinstance(first.get(k), int) else "str" for k in ID_FIELDS}


def _dtype(kind: str) -> pl.DataType:
    return pl.Int64() if kind == "int" else pl.String()


def records_schema(kinds: dict[str, str] | None) -> dict[str, pl.DataType]:
    return record_schema({k: _dtype(v) for k, v in (kinds or {}).items()})


def trace_schema(kinds: dict[str, str]) -> dict[str, pl.DataType]:
    return {
        "request_id": _dtype(kinds["request_id"]),
        "session_id": _dtype(kinds["session_id"]),
        "node_id": _dtype(kinds["node_id"]),
        "session_size": pl.Int64(),
        "dispatched_at": pl.Float64(),
        "parent_nodes": pl.List(_dtype(kinds["node_id"])),
    }


# ------------------------------------------------------------------ the work of one task


def parse_records_block(path: Path, offset: int, length: int, kinds: dict[str, str]) -> Parsed:
    parsed, skipped = parse_block(read_block(path, offset, length), records_schema(kinds))
    frame, gaps, lengths = split_tbc(parsed)
    return frame, gaps, lengths, length, skipped


def parse_trace_file(path: Path, kinds: dict[str, str]) -> pl.DataFrame:
    """The trace columns evaluation uses: ids, session size, whether a node is a session root, and
    whether it was dispatched (a node not sent, because an earlier one failed, has a line too)."""
    schema = trace_schema(kinds)
    frames = [parse_trace_block(read_block(path, off, ln), schema) for off, ln in block_ranges(path)]
    df = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=schema)
    return df.select(
        "request_id",
        "session_id",
        "session_size",
        is_root=pl.col("parent_nodes").list.len().fill_null(0) == 0,
        dispatched=pl.col("dispatched_at").is_not_null(),
    )
