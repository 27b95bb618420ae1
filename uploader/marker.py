"""`<dir>/wandb_run.json`: what was uploaded, where, and a digest to recognise "uploaded and unchanged".

The digest covers the content of every file the upload reads plus the settings that shape the W&B run
(project, group, tags, ...) and UPLOAD_FORMAT, bumped whenever the uploader logs something new; so
changing a file, a flag or the uploader makes the next backfill upload the directory again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from veeksha.shared.jsonio import write_json
from veeksha.shared.paths import WANDB_RUN_JSON
from veeksha.shared.redact import redact_url
from veeksha.uploader.run_files import is_own_file

UPLOAD_FORMAT = 2  # 2: the anchor row at step 0; the server left out of the digest
_CHUNK = 1 << 20


@dataclass
class Marker:
    run_id: str  # the W&B run id
    url: str | None
    entity: str | None
    project: str
    group: str | None
    name: str
    tags: list[str]
    mode: str
    digest: str
    uploaded_at: str
    kind: str
    veeksha_run_id: str | None = None
    sync_dir: str | None = None  # offline: the run's folder, relative to the directory
    sync_command: str | None = None
    settings: dict[str, Any] | None = None  # UploadSettings.identity(): --sync publishes with these
    base_url: str | None = None  # online: the server it went to
    online_attempted: bool = False  # offline, written after an online attempt failed: never "published"
    history_rows: int | None = None  # offline: rows logged (anchor included); a published copy has them all
    directory: str | None = None  # dir_identity() of the directory it was written in (a copy has another)
    # The API key's default entity, when the upload knew it: an upload that does not (offline, after a
    # failed probe, a dry run) then still knows that naming it is naming none (worker.make_plan).
    default_entity: str | None = None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def compute_digest(root: Path, files: Iterable[str], identity: dict[str, Any]) -> str:
    """sha256 over (relative path, content hash) of each file plus the upload identity."""
    h = hashlib.sha256()
    h.update(orjson.dumps({"format": UPLOAD_FORMAT, **identity}, option=orjson.OPT_SORT_KEYS))
    for rel in sorted(files):
        h.update(b"\0" + rel.encode() + b"\0" + file_sha256(root / rel).encode())
    return "sha256:" + h.hexdigest()


def read_marker(root: Path) -> Marker | None:
    """The marker, or None when absent or unreadable (an unreadable marker means: upload again)."""
    if not is_own_file(root, root / WANDB_RUN_JSON):  # e.g. a FIFO, which would block the read
        return None
    try:
        data = orjson.loads((root / WANDB_RUN_JSON).read_bytes())
        return Marker(**data)
    except (OSError, orjson.JSONDecodeError, TypeError):
        return None


def write_marker(root: Path, marker: Marker) -> None:
    # A W&B URL may hold a proxy's password (https://user:pass@...): the marker keeps none.
    shown = replace(
        marker,
        url=redact_url(marker.url) if marker.url else marker.url,
        base_url=redact_url(marker.base_url) if marker.base_url else marker.base_url,
    )
    write_json(root / WANDB_RUN_JSON, asdict(shown))


def remove_marker(root: Path) -> None:
    (root / WANDB_RUN_JSON).unlink(missing_ok=True)


def dir_identity(root: Path) -> str:
    """Device and inode of the directory: a copy (`cp -a`) has another, a rename keeps it."""
    st = root.stat()
    return f"{st.st_dev}:{st.st_ino}"


def written_here(marker: Marker, root: Path) -> bool:
    """The marker was written in this directory, not copied along with it (older markers: assumed)."""
    return marker.directory is None or marker.directory == dir_identity(root)


def is_current(marker: Marker | None, root: Path, digest: str, mode: str, base_url: str) -> bool:
    """Uploaded before, in this mode (online: to this server), from exactly this content and settings."""
    if marker is None or marker.digest != digest or marker.mode != mode:
        return False
    if mode == "online" and marker.base_url not in (None, redact_url(base_url)):
        return False
    if mode == "offline":  # the offline run must still be there to be synced
        return (
            marker.sync_dir is not None and (root / marker.sync_dir / f"run-{marker.run_id}.wandb").is_file()
        )
    return True


def utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
