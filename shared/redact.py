"""The one secret-redaction rule, used by the runner (config.yml, run.json argv) and the uploader.

A value is secret when its key, case-insensitively, is one of SECRET_NAMES or ends with one of
SECRET_SUFFIXES, wherever it sits (headers, additional_sampling_params, server.env, ...).
`max_tokens` and friends are not secrets: they end in `_tokens`, not `_token`.
"""

from __future__ import annotations

from typing import Any

REDACTED = "<redacted>"
SECRET_NAMES = frozenset(
    {"api_key", "apikey", "authorization", "proxy-authorization", "password", "secret", "token"}
)
SECRET_SUFFIXES = ("_key", "_token", "_secret", "_password", "-key", "-token", "-secret")


def is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    k = key.lower()
    return k in SECRET_NAMES or k.endswith(SECRET_SUFFIXES)


def redact(obj: Any) -> Any:
    """Return a copy of a JSON-like tree with every secret value replaced by REDACTED."""
    if isinstance(obj, dict):
        return {
            k: (REDACTED if is_secret_key(k) and v not in (None, "") else redact(v)) for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [redact(v) for v in obj]
    return obj


def redact_argv(argv: list[str]) -> list[str]:
    """Hide the value that follows (or is attached to) a secret-looking `--a.b.api_key` flag."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if arg.startswith("--"):
            name, eq, _ = arg[2:].partition("=")
            if is_secret_key(name.rsplit(".", 1)[-1].replace("-", "_")):
                if eq:
                    out.append(f"--{name}={REDACTED}")
                else:
                    out.append(arg)
                    hide_next = True
                continue
        out.append(arg)
    return out


def scrub_text(text: str, secrets: list[str]) -> str:
    """Replace literal secret values in free text (e.g. an error message echoing a header)."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, REDACTED)
    return text
