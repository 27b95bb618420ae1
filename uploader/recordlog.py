"""Make an offline run relocatable: artifact file paths in its `.wandb` log become relative.

The SDK records every artifact file (ours and the tables' staging copies) by absolute path; a copy of
the directory on another machine would then point at files that do not exist. After the run is
finished we rewrite those paths relative to the run directory, so `cd DIR && wandb sync wandb/` works
wherever DIR was copied to (wandb-core opens them relative to its working directory).

The log is LevelDB-log style (wandb.md): a 7-byte header `:W&B` + 0xBEE1 + version, then 32 KiB
blocks of chunks, each `crc32(type + data)` (u32 LE), length (u16 LE), type (FULL/FIRST/MIDDLE/LAST).
Only records that change are re-serialised; the rest are copied byte for byte.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from veeksha.shared.jsonio import write_atomic

MAGIC = b":W&B"
KNOWN_VERSION = 0
HEADER_LEN = 7
BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class RecordLogError(Exception):
    pass


class IncompleteLog(RecordLogError):
    """The SDK did not finish writing the log (no exit record)."""


def read_log(data: bytes) -> tuple[bytes, list[bytes]]:
    """(header, record payloads) of a whole log; raises RecordLogError when it is not one."""
    if len(data) < HEADER_LEN or data[:4] != MAGIC or struct.unpack("<H", data[4:6])[0] != 0xBEE1:
        raise RecordLogError("not a W&B transaction log (bad header)")
    records: list[bytes] = []
    pending: bytearray | None = None
    for kind, chunk in _chunks(data):
        pending = _add_chunk(kind, chunk, pending, records)
    return data[:HEADER_LEN], records


def _chunks(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, data) of each checked chunk after the header, in order; padding and zero fill skipped.

    A generator, so a corrupt chunk is reported only after the records before it were assembled.
    """
    pos = HEADER_LEN
    while pos < len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:
            pos += left  # block trailer padding
            continue
        if pos + CHUNK_HEADER > len(data):
            return  # a chunk header cut short: the log ends before it
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 0 and length == 0:
            continue  # zero fill
        if len(chunk) != length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise RecordLogError(f"corrupt chunk at byte {pos - CHUNK_HEADER - length}")
        yield kind, chunk


def _add_chunk(kind: int, chunk: bytes, pending: bytearray | None, records: list[bytes]) -> bytearray | None:
    """Append a whole record to `records` or grow the one in pieces; returns the record still pending."""
    if kind == FULL:
        records.append(chunk)
    elif kind == FIRST:
        return bytearray(chunk)
    elif kind in (MIDDLE, LAST) and pending is not None:
        pending += chunk
        if kind == LAST:
            records.append(bytes(pending))
            return None
    else:
        raise RecordLogError(f"unexpected chunk type {kind}")
    return pending


def write_log(header: bytes, records: list[bytes]) -> bytes:
    out = bytearray(header)
    for payload in records:
        first = True
        rest = payload
        while True:
            left = BLOCK - len(out) % BLOCK
            if left < CHUNK_HEADER:
                out += b"\0" * left
                left = BLOCK
            room = left - CHUNK_HEADER
            piece, rest = rest[:room], rest[room:]
            last = not rest
            kind = FULL if first and last else FIRST if first else LAST if last else MIDDLE
            crc = zlib.crc32(piece, zlib.crc32(bytes([kind])))
            out += struct.pack("<IHB", crc, len(piece), kind) + piece
            first = False
            if last:
                break
    return bytes(out)


def _ends_with_exit(records: list[bytes]) -> bool:
    from wandb.proto import wandb_internal_pb2 as pb

    if not records:
        return False
    last = pb.Record()  # type: ignore[attr-defined]  # wandb's generated protobuf module has no stubs
    last.ParseFromString(records[-1])
    return last.WhichOneof("record_type") == "exit"


def read_complete(wandb_file: Path, timeout: float = 15.0) -> tuple[bytes, list[bytes]]:
    """The whole log, once the SDK has written its last (exit) record.

    `run.finish()` can return before wandb-core's writer has flushed the end of the file; rewriting
    it then would drop the records still in flight.
    """
    deadline = time.monotonic() + timeout
    previous = -1
    while True:
        data = wandb_file.read_bytes()
        try:
            header, records = read_log(data)
            if _ends_with_exit(records) and len(data) == previous:
                return header, records
        except RecordLogError:
            pass  # a chunk still being written
        if time.monotonic() > deadline:
            raise IncompleteLog(f"{wandb_file.name} was not complete after {timeout:g} s")
        previous = len(data)
        time.sleep(0.02)


def relativize_artifact_paths(wandb_file: Path, root: Path) -> int:
    """Rewrite artifact `local_path`s under `root` as paths relative to it; returns how many."""
    from wandb.proto import wandb_internal_pb2 as pb

    header, records = read_complete(wandb_file)
    if header[6] != KNOWN_VERSION:
        raise RecordLogError(f"unknown transaction log version {header[6]}")
    prefix = str(root) + os.sep
    changed = 0
    out: list[bytes] = []
    for payload in records:
        record = pb.Record()  # type: ignore[attr-defined]  # wandb's generated protobuf module has no stubs
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") != "artifact":
            out.append(payload)
            continue
        n = 0
        manifest = record.artifact.manifest
        for entry in manifest.contents:
            if entry.local_path.startswith(prefix):
                entry.local_path = entry.local_path[len(prefix) :]
                n += 1
        if manifest.manifest_file_path.startswith(prefix):
            manifest.manifest_file_path = manifest.manifest_file_path[len(prefix) :]
            n += 1
        changed += n
        out.append(record.SerializeToString() if n else payload)
    if changed:
        write_atomic(wandb_file, write_log(header, out))
    return changed
