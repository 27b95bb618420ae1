"""Redaction on top of the shared rule, for everything the uploader hands to the SDK.

config.yml is already redacted by the runner; we redact again because a directory may come from an
older runner or a hand-edited file. Beyond the shared key rule we hide header-like values
("Bearer ...", "Basic ...") under any key, and every literal secret we know of (API keys given to the
uploader, values the key rule removed) wherever it appears in free text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from veeksha.shared.redact import REDACTED, is_secret_key, redact, scrub_text, secret_values

# The shortest value of the shared rule (server.env, a command's --api-key) scrubbed from files.
MIN_SCRUBBED_CHARS = 8
# An Authorization-style value: a scheme and one credential (`Bearer sk-...`), or Digest's
# `name=value` list. Not any text that starts with such a word: "Basic arithmetic questions ..." in a
# system prompt was hidden, and its words scrubbed from every uploaded record.
# The token must look like one: a digit, mixed case or a symbol of base64/keys ("Token throughput" in
# notes is prose).
_AUTH_VALUE = re.compile(
    r"^\s*(?:(?i:bearer|basic|token|apikey|api-key)\s+"
    r"(?=\S*(?:\d|[A-Z]\S*[a-z]|[a-z]\S*[A-Z]|[+/=_.~-]))\S{8,}\s*$"
    r"|(?i:digest)\s+\w+=)"
)


@dataclass
class Redactor:
    """Collects the literal secrets it removes, so they can be scrubbed from files and text too."""

    known: set[str] = field(default_factory=set)

    def add_secret(self, value: str | None) -> None:
        if value and len(value) >= 4 and value != REDACTED:
            self.known.add(value)

    def tree(self, obj: Any) -> Any:
        """A copy of a JSON-like tree with secrets replaced; remembers what it removed. The shared
        rule goes first (every server.env value, the value after a command's --api-key), then
        this module's own."""
        for value in secret_values(obj):
            # Kept to scrub from every uploaded file, byte for byte: a short word (a server.env
            # value such as "false" or "INFO") would blank ordinary text and break JSON.
            if len(value) >= MIN_SCRUBBED_CHARS:
                self._remember(value)  # "Bearer x": x too
        return self._tree(redact(obj))

    def _tree(self, obj: Any) -> Any:
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if is_secret_key(k) and v not in (None, "", REDACTED):
                    self._remember(v)
                    out[k] = REDACTED
                else:
                    out[k] = self._tree(v)
            return out
        if isinstance(obj, list | tuple):
            return [self._tree(v) for v in obj]
        if isinstance(obj, str):
            if _AUTH_VALUE.match(obj):
                self.add_secret(obj)
                self.add_secret(obj.split(None, 1)[1].strip())
                return REDACTED
            return self.text(obj)
        return obj

    def text(self, text: str) -> str:
        return scrub_text(text, sorted(self.known, key=len, reverse=True)) if self.known else text

    def contains_secret(self, data: bytes) -> bool:
        return any(s.encode() in data for s in self.known)

    def scrub_bytes(self, data: bytes) -> bytes:
        for s in sorted(self.known, key=len, reverse=True):
            data = data.replace(s.encode(), REDACTED.encode())
        return data

    def _remember(self, value: Any) -> None:
        if isinstance(value, str):
            self.add_secret(value)
            if _AUTH_VALUE.match(value):
                self.add_secret(value.split(None, 1)[1].strip())
        elif isinstance(value, dict):
            for v in value.values():
                self._remember(v)
        elif isinstance(value, list | tuple):
            for v in value:
                self._remember(v)
