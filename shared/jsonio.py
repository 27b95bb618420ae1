"""Atomic file writes and orjson helpers shared by runner and uploader."""

from __future__ import annotations

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
    """A failed write (disk full) names its file: errors from write() and flush() carry no name."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write via temp file + rename so a reader never sees a half-written file."""
    if isinstance(data, str):
        data = data.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600 files; outputs get the user's usual mode
        with naming_errors(path), os.fdopen(fd, "wb") as f:
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
