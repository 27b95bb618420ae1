"""How long an upload of one directory may take (docs/uploader.md, "Deadlines").

Shared by the uploader's worker pool, the live follower, and the runner that waits for its follower:
the runner never imports the uploader, so the rule lives here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from veeksha.shared.paths import WANDB_DIR

DEFAULT_DEADLINE_S = 300.0  # per directory, plus the time its files need at the slowest rate below
SLOWEST_RATE_BPS = 1 << 20  # 1 MiB/s: a backfill over a slow link still finishes big directories


def directory_bytes(root: Path) -> int:
    """Bytes of the directory's own regular files (what an upload can read), without wandb/."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != WANDB_DIR]
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def upload_deadline_s(root: Path, base_s: float = DEFAULT_DEADLINE_S) -> float:
    """Seconds an upload of `root` may take: the base, plus its size at SLOWEST_RATE_BPS."""
    return base_s + directory_bytes(root) / SLOWEST_RATE_BPS
