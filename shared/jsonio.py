"""Atomic file writes and orjson helpers shared by runner and uploader."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from veeksha.shared.errors import ContractError
from veeksha.shared.secret import json_default

_DUMP_OPTS = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


# The process umask, read once (reading it means setting it: not something to do from threads).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would give a new file


def is_utf8(text: str) -> bool:
    """False for text no UTF-8 file can hold: a name with bytes that are not UTF-8 (Python keeps
    them as lone surrogates), or a lone surrogate escape (`"\\udce9"` in YAML)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextmanager
def naming_errors(path: Path | str) -> Iterator[None]:
    """A failed write (disk full) names its file: errors from write() and flush() carry no name. One
    whose folder is gone (moved or deleted mid-run) says so: "No such file or directory" alone reads as
    if the file being written were what is missing."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        _say_if_gone(e, Path(path).parent)
        raise


def _say_if_gone(e: OSError, folder: Path) -> None:
    if e.errno == errno.ENOENT and (gone := gone_folder(folder)) is not None:
        e.strerror = f"{e.strerror} ({gone} was moved or deleted while in use)"


def gone_folder(folder: Path) -> Path | None:
    """The outermost of `folder` and its parents that no longer exists, or None when it is there."""
    gone = None
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        gone = candidate
    return gone


def require_folder(folder: Path) -> None:
    """Raise what a write into `folder` would, when it is gone: for a caller about to hand it to code
    that makes a missing folder (a run's parent directory), which would make it again, empty."""
    if not folder.is_dir():
        e = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(folder))
        _say_if_gone(e, folder)
        raise e


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write via temp file + rename so a reader never sees a half-written file. The folder must exist:
    a run's files never make their run directory again (one moved or deleted mid-run came back holding
    only run.json, which neither `evaluate` nor an upload could read); whoever makes a folder makes it
    first (RunPaths.make_dirs, run_dir.make_unique_dir)."""
    if isinstance(data, str):
        data = data.encode()
    try:
        _write_via_temp(path, data)
    except OSError as e:
        # Named by the file being written, not its temporary name (OSError picks the subclass).
        named = OSError(e.errno, e.strerror, str(path))
        _say_if_gone(named, path.parent)
        raise named from e


def _write_via_temp(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600 files; outputs get the user's usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dump_json(obj: Any) -> bytes:
    return orjson.dumps(obj, default=json_default, option=_DUMP_OPTS) + b"\n"


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, dump_json(obj))


def read_json(path: Path) -> Any:
    """Read a JSON file; raises ContractError naming the file when it is missing or corrupt."""
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ContractError(f"{path}: file is missing") from None
    except orjson.JSONDecodeError as e:
        raise ContractError(f"{path}: not valid JSON ({e})") from None
