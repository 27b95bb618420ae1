"""One uploader at a time per directory: overlapping cron backfills never upload a directory twice.

A non-blocking `flock` on `<dir>/.veeksha-upload.lock`: the kernel drops it when the holder exits, even
on a crash, so a stale lock file never blocks anyone. The file is left in place (deleting a lock file
races with the next locker).

A cron backfill skips a directory someone else holds (they are uploading it, or found it running).
The runner's own upload must not: a backfill that looked at the directory a moment before it finished
would skip it as running, and the runner's upload, skipping it as held, would leave it on nobody's
list. So an uploader may wait for the lock (`wait_s`), polling, since `flock` has no timeout.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from veeksha.shared.errors import ContractError
from veeksha.shared.paths import UPLOAD_LOCK


class LockBusy(Exception):
    """Another process holds the directory's upload lock."""


POLL_S = 0.2


class DirLock:
    def __init__(self, directory: Path, wait_s: float = 0.0) -> None:
        self.path = directory / UPLOAD_LOCK
        self.wait_s = wait_s
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            # O_NOFOLLOW: a planted link must not make us create or open a file outside the directory.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ContractError(f"{self.path} is a symbolic link; remove it to upload") from None
            raise
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(POLL_S)
                    continue
                os.close(fd)
                raise LockBusy(str(self.path)) from None
            self._fd = fd
            return

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
