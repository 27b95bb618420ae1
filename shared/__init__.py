"""What the runner and the uploader agree on: config schema, output-directory contract, redaction."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("veeksha")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"
