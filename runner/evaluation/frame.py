"""Request records → polars, at scale.

A long run holds ~1M records whose `tbc` lists total ~100M+ gaps. The file is read in blocks of a
few tens of MB with polars' NDJSON reader (explicit schema, no Python per line), and the gaps are kept
once, as one flat float64 numpy array plus per-record offsets: no List column, no second copy. Every
consumer (quantiles, SLOs, goodput, time series) works on that flat array with vectorised numpy.

A torn last line (a crash mid-append) is skipped, like `shared.jsonio.iter_jsonl`. A block polars
cannot parse (a corrupt line in the middle, an unexpected type) is re-read line by line with orjson,
skipping what cannot be read, so one bad line never loses a run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
from veeksha.shared.records import CANCELLED, ERROR, REQUEST_RECORD_FIELDS, SUCCESS, TIMEOUT

BLOCK_BYTES = 48 * 2**20
ID_FIELDS = ("request_id", "session_id", "node_id")
FLOAT_FIELDS = (
    "scheduler_ready_at",
    "scheduler_dispatched_at",
    "client_picked_up_at",
    "client_completed_at",
    "result_processed_at",
    "ttfc",
    "tpot",
    "end_to_end_latency",
    "normalized_end_to_end_latency",
    "output_throughput",
    "dispatch_delay",
)
INT_FIELDS = (
    "http_status",
    "num_delta_prompt_tokens",
    "num_total_prompt_tokens",
    "target_num_delta_prompt_tokens",
    "num_output_tokens",
    "num_requested_output_tokens",
)
BOOL_FIELDS = ("is_warmup", "is_stream")
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
        elif name == "tbc":
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

    def __len__(self) -> int:
        return self.df.height


# ------------------------------------------------------------------ reading


def _id_types(first: dict[str, Any] | None) -> dict[str, pl.DataType]:
    """Integer ids stay Int64; any other id (a string from a trace) is read as String."""
    if first is None:
        return {}
    return {k: pl.Int64() if isinstance(first.get(k), int) else pl.String() for k in ID_FIELDS}


def _first_record(path: Path) -> dict[str, Any] | None:
    with path.open("rb") as f:
        for line in f:
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def _blocks(path: Path, block_bytes: int) -> Iterable[bytes]:
    """Whole lines, in blocks; a final line without newline is kept only if it parses."""
    with path.open("rb") as f:
        rest = b""
        while chunk := f.read(block_bytes):
            data = rest + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            rest = data[cut + 1 :]
            yield data[: cut + 1]
        if rest.strip():
            try:
                orjson.loads(rest)
            except orjson.JSONDecodeError:
                return  # torn by a crash mid-append
            yield rest + b"\n"


def _parse_block(block: bytes, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    try:
        return pl.read_ndjson(block, schema=schema)
    except (pl.exceptions.ComputeError, pl.exceptions.SchemaError, ValueError):
        rows = []
        for line in block.splitlines():
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                rows.append(_coerce(obj, schema))
        return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


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


def read_records(path: Path, *, block_bytes: int = BLOCK_BYTES) -> Records:
    """Read metrics/request_level_metrics.jsonl (a missing file reads as no records)."""
    first = _first_record(path) if path.exists() else None
    schema = record_schema(_id_types(first))
    frames: list[pl.DataFrame] = []
    gap_parts: list[np.ndarray] = []
    length_parts: list[np.ndarray] = []
    if first is not None:
        for block in _blocks(path, block_bytes):
            frame, gaps, lengths = _split_tbc(_parse_block(block, schema))
            frames.append(frame)
            gap_parts.append(gaps)
            length_parts.append(lengths)
    return _assemble(frames, gap_parts, length_parts, schema)


def _split_tbc(df: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """(frame without tbc, flat gaps, gaps per row), keeping only what statistics use: the gaps of
    successful, non-warmup requests (so the flat array *is* the pooled tbc sample, no copy needed)."""
    kept = pl.when((pl.col("status") == SUCCESS) & ~pl.col("is_warmup").fill_null(False))
    lf = df.lazy().with_columns(tbc=kept.then(pl.col("tbc")))
    lengths = lf.select(pl.col("tbc").list.len().fill_null(0)).collect().to_series().to_numpy()
    gaps = lf.select(pl.col("tbc").explode(empty_as_null=False, keep_nulls=False)).collect().to_series()
    frame = lf.with_columns(has_tbc=pl.col("tbc").is_not_null()).drop("tbc").collect()
    # numpy-owned copies: freed back to the OS as soon as they are concatenated (see _concat).
    return frame, np.array(gaps.to_numpy(), dtype=np.float64), lengths.astype(np.int64)


def records_from_dicts(records: list[dict[str, Any]]) -> Records:
    """Records from in-memory dicts (tests, small inputs): same columns as read_records."""
    schema = record_schema(_id_types(records[0] if records else None))
    if not records:
        return _assemble([], [], [], schema)
    df = pl.DataFrame([_coerce(r, schema) for r in records], schema=schema, orient="row")
    frame, gaps, lengths = _split_tbc(df)
    return _assemble([frame], [gaps], [lengths], schema)


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    """Concatenate while releasing each part, so the peak is one copy plus one part."""
    out = np.empty(sum(len(p) for p in parts), dtype=dtype)
    pos = 0
    for i in range(len(parts)):
        n = len(parts[i])
        out[pos : pos + n] = parts[i]
        parts[i] = None  # type: ignore[call-overload]
        pos += n
    return out


def _assemble(
    frames: list[pl.DataFrame],
    gap_parts: list[np.ndarray],
    length_parts: list[np.ndarray],
    schema: dict[str, pl.DataType],
) -> Records:
    if frames:
        df = pl.concat(frames, how="vertical", rechunk=True)
    else:
        empty = {k: v for k, v in schema.items() if k != "tbc"}
        df = pl.DataFrame(schema={**empty, "has_tbc": pl.Boolean()})
    lengths = _concat(length_parts, np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Records(df=_derive(df), tbc_values=_concat(gap_parts, np.float64), tbc_offsets=offsets)


def _derive(df: pl.DataFrame) -> pl.DataFrame:
    """Columns every evaluator uses: row index, status flags, the request's end time."""
    status = pl.col("status")
    return df.with_columns(
        row=pl.int_range(pl.len(), dtype=pl.Int64),
        is_warmup=pl.col("is_warmup").fill_null(False),
        ok=status == SUCCESS,
        failed=status.is_in(FAILED_STATUSES),
        cancelled=status == CANCELLED,
        # When a request stopped occupying the client: completion, else (cancelled) processing.
        end_at=pl.coalesce("client_completed_at", "result_processed_at"),
    )


def read_trace(path: Path) -> pl.DataFrame | None:
    """The dispatch trace columns evaluation uses, or None when there is no trace."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    first = _first_record(path)
    if first is None:
        return None
    ids = _id_types(first)
    schema = {
        "request_id": ids["request_id"],
        "session_id": ids["session_id"],
        "node_id": ids["node_id"],
        "session_size": pl.Int64(),
        "parent_nodes": pl.List(ids["node_id"]),
    }
    frames = [_parse_trace_block(b, schema) for b in _blocks(path, BLOCK_BYTES)]
    df = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=schema)
    return df.select(
        "request_id",
        "session_id",
        "session_size",
        is_root=pl.col("parent_nodes").list.len().fill_null(0) == 0,
    )


def _parse_trace_block(block: bytes, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    try:
        return pl.read_ndjson(block, schema=schema)
    except (pl.exceptions.ComputeError, pl.exceptions.SchemaError, ValueError):
        rows = []
        for line in block.splitlines():
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
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
