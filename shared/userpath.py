"""Paths the user typed (a config key, a command-line PATH), with a leading `~` or `~user` expanded."""

from __future__ import annotations

from pathlib import Path

from veeksha.shared.errors import UsageError


def expand_home(path: str, where: str, error: type[UsageError] = UsageError) -> Path:
    """`~/x` and `~user/x` as the shell would. A user without a home here (a config or a command
    written on another machine) is one line that starts with `where` (the flag or the config key, as
    the caller's messages name it) raised as `error`, not pathlib's RuntimeError traceback."""
    problem = home_problem(path)
    if problem:
        raise error(f"{where}: {problem}")
    return Path(path).expanduser()


def home_problem(path: str) -> str | None:
    """Why `path` cannot be expanded (a `~user` with no home on this machine), or None."""
    try:
        Path(path).expanduser()
    except RuntimeError:
        user = path[1:].split("/", 1)[0] or "the current user"
        return f"{path!r} starts with ~, but {user} has no home directory on this machine; give the full path"
    return None
