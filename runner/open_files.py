"""The open-file limit, which caps connections: every connection is a file descriptor.

Login shells and containers often start processes with a soft limit of 1024 (or less) under a hard
limit of tens of thousands. The simulated server raises its soft limit to the hard one at start; so
does `veeksha-run`, whose drivers and servers inherit it (a concurrency run above ~1000 sessions ran
out of sockets). Kept apart from the server (only `resource`) so the command line can import it cheaply.
"""

from __future__ import annotations

import contextlib
import resource

# A hard limit of "unlimited" cannot be the soft one (Linux caps it at fs.nr_open, 1048576 by default;
# macOS lower): try this, and keep the current soft limit when even this is refused.
_UNLIMITED_TARGET = 1 << 20


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):  # not allowed here: run with what we have
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
