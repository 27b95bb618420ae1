"""The `.wandb` log reader/writer behind relocatable offline runs."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from veeksha.uploader.recordlog import (
    BLOCK,
    RecordLogError,
    read_log,
    relativize_artifact_paths,
    write_log,
)
from wandb.proto import wandb_internal_pb2 as pb

from tests.uploader.wandb_records import records

HEADER = b":W&B" + struct.pack("<H", 0xBEE1) + b"\x00"


@pytest.mark.parametrize(
    "sizes", [[0, 1, 10], [BLOCK - 14, 5], [BLOCK * 2 + 123, 40_000, 7], [BLOCK - 7 - 7]]
)
def test_records_survive_a_round_trip_across_block_boundaries(sizes: list[int]) -> None:
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    data = write_log(HEADER, payloads)
    assert read_log(data) == (HEADER, payloads)


def test_a_damaged_chunk_is_reported() -> None:
    data = bytearray(write_log(HEADER, [b"hello world"]))
    data[-1] ^= 0xFF
    with pytest.raises(RecordLogError, match="corrupt chunk"):
        read_log(bytes(data))
    with pytest.raises(RecordLogError, match="bad header"):
        read_log(b"not a log at all")


def artifact_record(*paths: str) -> pb.Record:
    r = pb.Record()
    r.artifact.name = "a"
    r.artifact.type = "veeksha-run"
    for i, p in enumerate(paths):
        entry = r.artifact.manifest.contents.add()
        entry.path = f"f{i}"
        entry.local_path = p
    return r


def test_artifact_paths_inside_the_directory_become_relative(tmp_path: Path) -> None:
    root = tmp_path / "run"
    history = pb.Record()
    history.history.item.add(key="x", value_json="1")
    exit_record = pb.Record()
    exit_record.exit.exit_code = 0
    art = artifact_record(f"{root}/metrics/a.json", f"{root}/wandb/data/tmp1", "/elsewhere/b.json")
    log = tmp_path / "run-x.wandb"
    payloads = [r.SerializeToString() for r in (history, art, exit_record)]
    log.write_bytes(write_log(HEADER, payloads))

    assert relativize_artifact_paths(log, root) == 2
    after = records(log)
    assert [c.local_path for c in after[1].artifact.manifest.contents] == [
        "metrics/a.json",
        "wandb/data/tmp1",
        "/elsewhere/b.json",
    ]
    assert after[0].SerializeToString() == payloads[0]  # untouched records are copied as they were


def test_an_unfinished_log_is_not_rewritten(tmp_path: Path) -> None:
    log = tmp_path / "run-x.wandb"
    log.write_bytes(write_log(HEADER, [artifact_record(f"{tmp_path}/a").SerializeToString()]))
    from veeksha.uploader import recordlog

    with pytest.raises(recordlog.IncompleteLog, match="not complete"):
        recordlog.read_complete(log, timeout=0.1)
