"""Which files of a directory the uploader may read: regular files inside it, with UTF-8 names.

A run directory may come from anywhere (a copied tree, a hand-edited folder). A symlink in it may
point at /etc/passwd, a FIFO blocks whoever opens it, and a name that is not UTF-8 cannot become a
W&B key. Every place the uploader reads or collects a file asks `refusal` first; it only stats
(never opens) the file, so a FIFO is never opened. Symlinks that stay inside the directory are fine.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from veeksha.shared.errors import ContractError
from veeksha.shared.jsonio import is_utf8
from veeksha.shared.paths import WANDB_DIR
from veeksha.uploader.wandb_session import REDACTED_DIR, STAGING_DIR

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def shown(text: str | os.PathLike[str]) -> str:
    """Text safe to print and to put in JSON: undecodable name bytes become `\\xff` escapes."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def refusal(root: Path, path: Path) -> str | None:
    """None when `path` is a regular file inside `root` with a UTF-8 name; else why it is refused.

    `path` must exist as a directory entry (os.path.lexists); a missing file is the caller's case.
    """
    if not is_utf8(str(path.relative_to(root))):  # the directory's own name is check_directory's
        return "has a name that is not valid UTF-8"
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop (RuntimeError before Python 3.13)
        return f"cannot be resolved ({e})"
    if not real.is_relative_to(root.resolve()):
        return f"resolves outside the run directory (to {real})"
    try:
        mode = os.stat(real).st_mode  # `real` has no symlink left: this stats the file itself
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if not stat.S_ISREG(mode):
        return f"is {_kind(mode)}, not a regular file"
    return None


def is_own_file(root: Path, path: Path) -> bool:
    """An existing regular file inside `root`: safe to open."""
    return os.path.lexists(path) and refusal(root, path) is None


def check_directory(root: Path) -> None:
    """Refuse a directory the uploader must not write into (raises ContractError).

    The uploader creates, rewrites and deletes folders under DIR/wandb/: were that a link, an
    upload would do so wherever it points. W&B needs UTF-8 names for the run and its files.
    """
    if not is_utf8(str(root)):
        raise ContractError(f"{shown(root)}: the directory name is not valid UTF-8; rename it to upload it")
    wandb_dir = root / WANDB_DIR
    # The SDK's own links in wandb/ (latest-run, debug.log) are recreated by it; ours are not.
    for folder in (wandb_dir, wandb_dir / STAGING_DIR, wandb_dir / REDACTED_DIR):
        if folder.is_symlink():
            raise ContractError(
                f"{folder} is a symbolic link (to {os.readlink(folder)}); the uploader writes and "
                f"deletes inside {WANDB_DIR}/ and never follows a link out of it: remove the link"
            )
        if os.path.lexists(folder) and not folder.is_dir():
            raise ContractError(f"{folder} is not a directory; remove it to upload this directory")


@dataclass
class RunFiles:
    """The readable files of one directory, and a warning for each file left out."""

    root: Path
    warnings: list[str] = field(default_factory=list)
    # Files found unusable once read (a table cut short, a broken image): glob no longer lists them,
    # so they are neither logged nor put in the artifact.
    left_out: set[str] = field(default_factory=set)

    def usable(self, path: Path) -> bool:
        """An existing entry the uploader may read; else False, with a warning naming it."""
        why = refusal(self.root, path)
        if why is None:
            return True
        if why.startswith("is a directory") and path.resolve().is_relative_to(self.root.resolve()):
            return False  # a sub-folder a glob happened to match: nothing worth a warning
        self._warn(f"not uploaded: {self._rel(path)} {why}")
        return False

    def glob(self, pattern: str) -> list[Path]:
        """Files matching `pattern` that the uploader may read, sorted (never under wandb/, never a
        hidden file: the runner's temporaries are, and one left by a failed plot is no output)."""
        found = []
        for path in sorted(self.root.glob(pattern)):
            parts = path.relative_to(self.root).parts
            if parts[0] == WANDB_DIR or any(part.startswith(".") for part in parts):
                continue
            if self._rel(path) in self.left_out:
                continue
            if self.usable(path):
                found.append(path)
        return found

    def require(self, path: Path) -> Path:
        """A file the upload cannot do without: missing or refused raises ContractError naming it."""
        if not os.path.lexists(path):
            raise ContractError(f"{path}: file is missing")
        why = refusal(self.root, path)
        if why is not None:
            raise ContractError(f"{path}: {why}; not read")
        return path

    def optional(self, path: Path) -> Path | None:
        """A file read when present; absent or refused (with a warning) gives None."""
        if not os.path.lexists(path) or not self.usable(path):
            return None
        return path

    def leave_out(self, path: Path, why: str) -> None:
        """A file found unusable once read: not uploaded, with a warning naming it and why."""
        self.left_out.add(self._rel(path))
        self._warn(f"not uploaded: {self._rel(path)} {why}")

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _warn(self, text: str) -> None:
        if text not in self.warnings:  # a file both collected and read is named once
            self.warnings.append(text)
