"""Request records → polars, at scale.

A long run holds ~1M records whose `tbc` lists total ~100M+ gaps. Blocks of the file are parsed by
polars' NDJSON reader (explicit schema, no Python per line; see reading.py for the file side), and the
gaps are kept once, as one flat float64 numpy array plus per-record offsets: no List column, no second
copy. Every consumer (quantiles, SLOs, goodput, time series) works on that flat array with numpy.

A block polars cannot parse (a corrupt line in the middle, an unexpected type) is re-read line by line
with orjson, skipping what cannot be read, so one bad line never loses a run. Skipped lines are
counted (`Records.num_corrupt_lines`) so that evaluation can say so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
from veeksha.shared.records import (
    CANCELLED,
    CLIENT_COMPLETED_AT,
    ERROR,
    FIELD,
    ID,
    REQUEST_RECORD_FIELDS,
    SCHEDULER_DISPATCHED_AT,
    SUCCESS,
    TBC,
    TIMEOUT,
)

RECORD_FIELDS = tuple(FIELD[name] for name in REQUEST_RECORD_FIELDS)

ID_FIELDS = tuple(f.name for f in RECORD_FIELDS if f.origin == ID)
FLOAT_FIELDS = tuple(f.name for f in RECORD_FIELDS if f.type is float)
INT_FIELDS = tuple(f.name for f in RECORD_FIELDS if f.type is int and f.origin != ID)
BOOL_FIELDS = tuple(f.name for f in RECORD_FIELDS if f.type is bool)
FAILED_STATUSES = (ERROR, TIMEOUT)  # "errored": the request failed (cancelled is counted apart)


def record_schema(id_types: dict[str, pl.DataType] | None = None) -> dict[str, pl.DataType]:
    """The polars schema of one request record (ids default to Int64)."""
    ids = id_types or {}
    schema: dict[str, pl.DataType] = {}
    for name in REQUEST_RECORD_FIELDS:
        if name in ID_FIELDS:
            schema[name] = ids.get(name, pl.Int64())
        elif name in FLOAT_FIELDS:
            schema[name] = pl.Float64()
        elif name in INT_FIELDS:
            schema[name] = pl.Int64()
        elif name in BOOL_FIELDS:
            schema[name] = pl.Boolean()
        elif FIELD[name].type is list:
            schema[name] = pl.List(pl.Float64())
        else:
            schema[name] = pl.String()
    return schema


@dataclass
class Records:
    """All records of a run: scalar columns in `df` (file order) and the pooled tbc gaps.

    Only successful non-warmup requests keep their gaps: row i's are
    `tbc_values[tbc_offsets[i]:tbc_offsets[i + 1]]` (`df["has_tbc"]` tells a kept empty list from
    none), and `tbc_values` as a whole is the run's pooled tbc sample.
    """

    df: pl.DataFrame
    tbc_values: np.ndarray
    tbc_offsets: np.ndarray
    num_corrupt_lines: int = 0  # non-empty lines that were not a JSON object, skipped

    def __len__(self) -> int:
        return self.df.height


# ------------------------------------------------------------------ reading


def id_types(first: dict[str, Any] | None) -> dict[str, pl.DataType]:
    """Integer ids stay Int64; any other id (a string from a trace) is read as String."""
    if first is None:
        return {}
    return {k: pl.Int64() if isinstance(first.get(k), int) else pl.String() for k in ID_FIELDS}


def first_record(path: Path) -> dict[str, Any] | None:
    with path.open("rb") as f:
        for line in f:
            obj = record_object(line)
            if obj is not None:
                return obj
    return None


def json_object(line: bytes) -> dict[str, Any] | None:
    """One JSONL line as a JSON object, or None when it is not one."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def record_object(line: bytes) -> dict[str, Any] | None:
    """One line of a request log or trace as a record: a JSON object with a request id, else None
    (a stray `{}` is no record: counted, it would add a request; first, it would type the ids)."""
    obj = json_object(line)
    return obj if obj is not None and obj.get("request_id") is not None else None


def _json_objects(block: bytes, skipped: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """The slow path for a block polars refused: line by line, skipping what is not a record
    (the 0-based index of each skipped non-empty line goes to `skipped`)."""
    for i, line in enumerate(block.splitlines()):
        obj = record_object(line)
        if obj is not None:
            yield obj
        elif skipped is not None and line.strip():
            skipped.append(i)


def parse_block(block: bytes, schema: dict[str, pl.DataType]) -> tuple[pl.DataFrame, int]:
    """(records of the block, how many non-empty lines were skipped as corrupt)."""
    try:
        df = pl.read_ndjson(block, schema=schema)
    except (pl.exceptions.ComputeError, pl.exceptions.SchemaError, ValueError):
        skipped: list[int] = []
        rows = [_coerce(obj, schema) for obj in _json_objects(block, skipped)]
        df = pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)
        return df, len(skipped)
    no_id = df["request_id"].is_null()  # JSON objects that are no record (a stray `{}`)
    return (df.filter(~no_id), int(no_id.sum())) if no_id.any() else (df, 0)


def corrupt_line_numbers(path: Path, limit: int = 20) -> list[int]:
    """1-based numbers of the first `limit` lines of a JSONL file that are not a record (a slow
    scan, run only when parsing skipped some). A torn last line is a crash artefact: not listed."""
    found: list[int] = []
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip() and line.endswith(b"\n") and record_object(line) is None:
                found.append(number)
                if len(found) >= limit:
                    break
    return found


def _coerce(obj: dict[str, Any], schema: dict[str, pl.DataType]) -> list[Any]:
    """One record as a row of the schema's types; values that do not fit become null."""
    row = []
    for name, dtype in schema.items():
        v = obj.get(name)
        try:
            if v is None:
                pass
            elif dtype == pl.Int64:
                v = int(v)
            elif dtype == pl.Float64:
                v = float(v)
            elif dtype == pl.Boolean:
                v = bool(v)
            elif dtype == pl.String:
                v = str(v)
            else:
                v = [float(x) for x in v]
        except (TypeError, ValueError):
            v = None
        row.append(v)
    return row


def split_tbc(df: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """(frame without tbc, flat gaps, gaps per row), keeping only what statistics use: the gaps of
    successful, non-warmup requests (so the flat array *is* the pooled tbc sample, no copy needed)."""
    kept = pl.when((pl.col("status") == SUCCESS) & ~pl.col("is_warmup").fill_null(False))
    lf = df.lazy().with_columns(kept.then(pl.col(TBC)).alias(TBC))
    lengths = lf.select(pl.col(TBC).list.len().fill_null(0)).collect().to_series().to_numpy()
    gaps = lf.select(pl.col(TBC).explode(empty_as_null=False, keep_nulls=False)).collect().to_series()
    frame = lf.with_columns(has_tbc=pl.col(TBC).is_not_null()).drop(TBC).collect()
    return frame, gaps.to_numpy(), lengths.astype(np.int64)


def records_from_dicts(records: list[dict[str, Any]]) -> Records:
    """Records from in-memory dicts (tests, small inputs): same columns as read_records."""
    schema = record_schema(id_types(records[0] if records else None))
    if not records:
        return assemble([], np.zeros(0), [], schema)
    df = pl.DataFrame([_coerce(r, schema) for r in records], schema=schema, orient="row")
    frame, gaps, lengths = split_tbc(df)
    return assemble([frame], np.array(gaps, dtype=np.float64), [lengths], schema)


def assemble(
    frames: list[pl.DataFrame],
    gaps: np.ndarray,
    length_parts: list[np.ndarray],
    schema: dict[str, pl.DataType],
    num_corrupt_lines: int = 0,
) -> Records:
    if frames:
        df = pl.concat(frames, how="vertical", rechunk=True)
    else:
        empty = {k: v for k, v in schema.items() if k != TBC}
        df = pl.DataFrame(schema={**empty, "has_tbc": pl.Boolean()})
    lengths = np.concatenate(length_parts) if length_parts else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Records(df=_derive(df), tbc_values=gaps, tbc_offsets=offsets, num_corrupt_lines=num_corrupt_lines)


def _derive(df: pl.DataFrame) -> pl.DataFrame:
    """Columns every evaluator uses: row index, status flags, the request's end time."""
    status = pl.col("status")
    return df.with_columns(
        row=pl.int_range(pl.len(), dtype=pl.Int64),
        is_warmup=pl.col("is_warmup").fill_null(False),
        ok=status == SUCCESS,
        failed=status.is_in(FAILED_STATUSES),
        cancelled=status == CANCELLED,
        # Sent: a cancelled request may never have been (its session's earlier request failed).
        dispatched=pl.col(SCHEDULER_DISPATCHED_AT).is_not_null(),
        # When a request stopped occupying the client: completion, else (cancelled) processing.
        end_at=pl.coalesce(CLIENT_COMPLETED_AT, "result_processed_at"),
    )


def parse_trace_block(block: bytes, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    try:
        return pl.read_ndjson(block, schema=schema)
    except (pl.exceptions.ComputeError, pl.exceptions.SchemaError, ValueError):
        rows = []
        for obj in _json_objects(block):
            parents = obj.get("parent_nodes")
            obj["parent_nodes"] = parents if isinstance(parents, list) else None
            rows.append({k: obj.get(k) for k in schema})
        return pl.DataFrame(rows, schema=schema, strict=False) if rows else pl.DataFrame(schema=schema)


def gather_segments(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """values[start:start+length] for each request, concatenated (a view when they are adjacent)."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.float64)
    nonzero = lengths > 0
    s, ln = starts[nonzero], lengths[nonzero]
    if np.array_equal(s[1:], s[:-1] + ln[:-1]):  # the usual case: the requests tile the array
        return values[int(s[0]) : int(s[0]) + total]
    first = np.zeros(len(ln), dtype=np.int64)
    np.cumsum(ln[:-1], out=first[1:])
    return values[np.arange(total, dtype=np.int64) + np.repeat(s - first, ln)]
