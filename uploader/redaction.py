"""Redaction on top of the shared rule, for everything the uploader hands to the SDK.

config.yml is already redacted by the runner; we redact again because a directory may come from an
older runner or a hand-edited file. Beyond the shared key rule we hide header-like values
("Bearer ...", "Basic ...": shared AUTH_VALUE) under any key, and every literal secret we know of
(API keys given to the uploader, values the key rule removed) wherever it appears in free text. The
W&B run's own notes, tags, group and name pass through the same value rule (Redactor.value).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from veeksha.shared.redact import (
    AUTH_VALUE,
    REDACTED,
    auth_value_secrets,
    is_secret_key,
    redact,
    scrub_text,
    secret_values,
)

# The shortest value of the shared rule (server.env, a command's --api-key) scrubbed from files.
MIN_SCRUBBED_CHARS = 8


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
            return self.value(obj)
        return obj

    def value(self, text: str) -> str:
        """One string value (a config leaf, W&B notes, a tag, a run name or group): REDACTED when it
        is shaped like an Authorization header's value (remembered, to scrub elsewhere), else with
        the known secrets scrubbed."""
        if AUTH_VALUE.match(text):
            for secret in auth_value_secrets(text):
                self.add_secret(secret)
            return REDACTED
        return self.text(text)

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
            for secret in [value, *auth_value_secrets(value)]:
                self.add_secret(secret)
        elif isinstance(value, dict):
            for v in value.values():
                self._remember(v)
        elif isinstance(value, list | tuple):
            for v in value:
                self._remember(v)
