"""Read an offline W&B run back from its `.wandb` record stream, to assert exactly what was logged.

Independent of the uploader's own log code on purpose. Format (wandb.md): a 7-byte header `:W&B` +
0xBEE1 + version, then 32 KiB blocks of chunks `crc32 (u32 LE) | length (u16 LE) | type (u8) | data`,
type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4; each assembled payload is a
`wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024


def iter_payloads(data: bytes):
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1, "not a .wandb file"
    pos, pending = 7, b""
    while pos < len(data):
        if BLOCK - pos % BLOCK < 7:
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"bad crc at {pos}"
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        else:
            pending += chunk
            if kind == 4:
                yield pending


def records(wandb_file: Path) -> list[pb.Record]:
    out = []
    for payload in iter_payloads(wandb_file.read_bytes()):
        r = pb.Record()
        r.ParseFromString(payload)
        out.append(r)
    return out


def _set(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


def _keys(item: Any) -> list[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


@dataclass
class Artifact:
    name: str
    type: str
    entries: dict[str, str]  # path in the artifact → local_path


@dataclass
class OfflineRun:
    sync_dir: Path
    run: pb.RunRecord
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    metrics: list[pb.MetricRecord] = field(default_factory=list)
    exit_code: int | None = None

    @property
    def tags(self) -> list[str]:
        return list(self.run.tags)

    def user_summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.summary.items() if not k.startswith("_")}

    def user_config(self) -> dict[str, Any]:
        return {k: v for k, v in self.config.items() if k != "_wandb"}

    def artifact(self, type_: str) -> Artifact:
        found = [a for a in self.artifacts if a.type == type_]
        assert len(found) == 1, [a.type for a in self.artifacts]
        return found[0]

    def media_keys(self, type_: str) -> list[str]:
        """Summary keys holding a logged media value of `type_` (e.g. "table-file", "image-file")."""
        return sorted(k for k, v in self.summary.items() if isinstance(v, dict) and v.get("_type") == type_)


def read_offline_run(sync_dir: Path) -> OfflineRun:
    files = list(sync_dir.glob("run-*.wandb"))
    assert len(files) == 1, files
    recs = records(files[0])
    run_records = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
    out = OfflineRun(sync_dir, run_records[0])
    _merge(out.config, out.run.config.update)
    for r in recs:
        _add_record(out, r)
    return out


def _merge(tree: dict[str, Any], items: Iterable[Any]) -> dict[str, Any]:
    """Set each item's JSON value at its (nested) key in `tree`, and return `tree`."""
    for item in items:
        _set(tree, _keys(item), json.loads(item.value_json))
    return tree


def _add_record(out: OfflineRun, r: pb.Record) -> None:
    """Fold one record into what the run logged; kinds not asserted on (run, stats, ...) are skipped."""
    kind = r.WhichOneof("record_type")
    if kind == "config":
        _merge(out.config, r.config.update)
    elif kind == "summary":
        _merge(out.summary, r.summary.update)
    elif kind == "history":
        out.history.append(_merge({}, r.history.item))
    elif kind == "artifact":
        out.artifacts.append(_artifact(r.artifact))
    elif kind == "files":
        out.files += [f.path for f in r.files.files]
    elif kind == "metric":
        out.metrics.append(r.metric)
    elif kind == "exit":
        out.exit_code = r.exit.exit_code


def _artifact(a: pb.ArtifactRecord) -> Artifact:
    return Artifact(a.name, a.type, {c.path: c.local_path for c in a.manifest.contents})


def offline_run_dirs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))
