"""The project's exception tree, mapped to exit codes at the CLI boundary."""

from __future__ import annotations


class Terminated(KeyboardInterrupt):
    """SIGTERM, stopping us as Ctrl-C does. Unlike a terminal's Ctrl-C it may have reached this process
    alone (`kill PID`, `timeout`, `docker stop`): a child we wait for is told too."""


class VeekshaError(Exception):
    """Base of every error we raise on purpose."""

    exit_code = 1


class UsageError(VeekshaError):
    """Bad input from the user: one clear line, exit status 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keys and values come from the user: a line break in one must not split the line.
        super().__init__(
            "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in message)
        )


class ConfigError(UsageError):
    """A configuration value is wrong; the message names the key path, the value, what is allowed."""


class OutputError(VeekshaError):
    """The output directory cannot be written (permissions, disk full): one line naming the path."""

    @classmethod
    def from_os_error(cls, e: OSError, what: str = "cannot write") -> OutputError:
        where = e.filename if e.filename is not None else "the output directory"
        return cls(f"{what} {where}: [Errno {e.errno}] {e.strerror}")


class ContractError(VeekshaError):
    """An output directory does not follow outputs.md (missing or corrupt file, named)."""
