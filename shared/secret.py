"""A secret value (an API key) that no printed, logged or written form can show.

`repr`, `str` and every f-string format of a Secret are `<redacted>`, so a config in a traceback, a
debug print or a dataclass repr is safe by construction, as httpx hides `Authorization` by type. The
written forms agree: `schema.to_dict` (config.yml, the config hash) and `jsonio.dump_json` turn a
Secret into `<redacted>`. Only `reveal()` gives the value: for the Authorization header (the client,
the /models probe), the header-value check, and the scrubbing of error messages. The sink-side rule
(redact.py) stays: a secret given under a plain `headers` key is still hidden by name.
"""

from __future__ import annotations

from typing import Any, NoReturn

from veeksha.shared.redact import REDACTED


class Secret:
    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str | Secret) -> None:
        object.__setattr__(self, "_value", value.reveal() if isinstance(value, Secret) else str(value))

    def reveal(self) -> str:
        """The real value (see the module docstring for its few users)."""
        return self._value

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return REDACTED

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("a Secret is immutable")

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        # Pickled for the driver process (spawn): the child needs the real value to send it.
        return (Secret, (self._value,))


def reveal(value: Secret | None) -> str | None:
    return value.reveal() if value is not None else None


def json_default(obj: Any) -> str:
    """orjson `default=`: a Secret is written as `<redacted>`; anything else stays unsupported."""
    if isinstance(obj, Secret):
        return REDACTED
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")
