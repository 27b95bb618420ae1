"""What the runner and the uploader agree on: config schema, output-directory contract, redaction.

`__version__` is looked up when first asked for, not on import: importlib.metadata takes ~30 ms to
import (email, zipfile, ...), and every command imports this package before its start guard
(shared/starting.py) is in place, so a Ctrl-C in that window printed a traceback from inside it."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy sees a plain attribute, and still refuses any other name imported from here
    __version__: str
else:

    def __getattr__(name: str) -> str:
        if name != "__version__":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("veeksha")
        except PackageNotFoundError:  # running from a source tree without an install
            found = "0.0.0+source"
        globals()["__version__"] = found
        return found
