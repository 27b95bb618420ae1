"""`<dir>/wandb_run.json`: what was uploaded, where, and a digest to recognise "uploaded and unchanged";
and `<dir>/.veeksha-upload.pending`: the upload under way (`Pending`).

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
from veeksha.shared.jsonio import write_atomic, write_json
from veeksha.shared.paths import UPLOAD_PENDING, WANDB_RUN_JSON
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


OFFLINE_ONLY = "offline"  # the pending file's second line: an offline upload of a run never on W&B


@dataclass(frozen=True)
class Pending:
    """The pending file: the W&B run an upload under way writes, until its marker is written.

    An upload that died leaves it, so the next one resumes that run. Whether the run may be on W&B
    decides whether `wandb sync` of a later offline copy is safe. The file holds the run id; an
    offline upload of a run that was never online (no online attempt or upload before it: nothing
    of it was sent) adds a second line, `offline`. The run id alone, as online uploads and older
    versions write it, means the run may be on W&B; so an older version still reads an online
    upload's file, and takes an offline-only one for no upload of its run, which is what it is."""

    run_id: str
    offline_only: bool = False

    @property
    def may_be_online(self) -> bool:
        return not self.offline_only


def read_pending(root: Path) -> Pending | None:
    """The pending file, or None when there is none (or it is no regular file of the directory)."""
    path = root / UPLOAD_PENDING
    if not is_own_file(root, path):  # e.g. a FIFO, which would block the read
        return None
    try:
        lines = path.read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    if not lines:
        return None
    return Pending(lines[0], offline_only=lines[1:] == [OFFLINE_ONLY])


def write_pending(root: Path, pending: Pending) -> None:
    text = f"{pending.run_id}\n{OFFLINE_ONLY}\n" if pending.offline_only else pending.run_id
    write_atomic(root / UPLOAD_PENDING, text)


def remove_pending(root: Path) -> None:
    (root / UPLOAD_PENDING).unlink(missing_ok=True)


def utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
