"""The one secret-redaction rule, used by the runner (config.yml, run.json argv) and the uploader.

A value is secret when its key, case-insensitively, is one of SECRET_NAMES or ends with one of
SECRET_SUFFIXES, wherever it sits (additional_sampling_params, ...); when it follows such a flag in a
command line (`--api-key VALUE`, `--api-key=VALUE`, also inside one `sh -c "..."` item) or is the
value of a `NAME=VALUE` item with such a name (`env HF_TOKEN=... vllm serve`); when it sits in a
mapping named in SECRET_MAPPINGS (every value of `server.env`: a server's environment carries tokens
under names no rule can guess); and a header value whose name looks like a credential's
(`Authentication`, `X-Auth`, `X-Session-Token`: servers and gateways take credentials under many
names) or whose value looks like one (a scheme and a token, or one long opaque word), unless its name
is in PLAIN_HEADERS. In a URL, the user-info and secret-looking query parameters are secret.
`max_tokens` and friends are not secrets: they end in `_tokens`, not `_token`.
"""

from __future__ import annotations

import base64
import re
import shlex
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

REDACTED = "<redacted>"
SECRET_NAMES = frozenset(
    {
        "api_key",
        "apikey",
        "authorization",
        "proxy-authorization",
        "password",
        "secret",
        "token",
        "cookie",
    }
)
SECRET_SUFFIXES = ("_key", "_token", "_secret", "_password", "-key", "-token", "-secret", "apikey")
SECRET_MAPPINGS = frozenset({"env"})
# Request headers that never carry a credential.
PLAIN_HEADERS = frozenset(
    {"accept", "content-type", "user-agent", "openai-organization", "openai-project", "openai-beta"}
)
# Parts of a header name that say its value is a credential (compared without case).
CREDENTIAL_HEADER_PARTS = (
    "auth",
    "key",
    "token",
    "secret",
    "cookie",
    "passw",
    "credential",
    "signature",
    "session",
)
# A header value that looks like a credential whatever its name: `<scheme> <token>` or one opaque
# token of 16 characters or more (what keys and signed values look like; not `no-cache`, `high`).
_CREDENTIAL_VALUE = re.compile(r"\S+\s+\S{8,}|[A-Za-z0-9._~+/=:-]{16,}")
HEADERS = "headers"
# URL query parameters that carry credentials under names the key rule does not catch, compared
# without case, `-` or `_` (`?key=`, `accessToken`, signed URLs' `sig=` and `X-Amz-Signature`).
SECRET_QUERY_PARAMS = frozenset({"key", "sig", "code", "auth"})
SECRET_QUERY_SUFFIXES = ("token", "signature", "secret", "password", "apikey", "credential", "authorization")


# Free-form values where a secret may sit under any name: a config error about one says where it is,
# never what it is. Every item of a command line (`--api-key VALUE`) or an environment; a header or
# request-parameter mapping as a whole (given as one string), its items only under secret-looking names.
SECRET_CONTAINERS = frozenset({"headers", "additional_sampling_params"})
SECRET_SEQUENCES = frozenset({"command"}) | SECRET_MAPPINGS


def may_hold_secret(key_path: str) -> bool:
    """Whether the value at a config key path (`client.headers.Authorization`, `server.env`) may be
    or hold a secret."""
    parts = key_path.replace("[", ".").replace("]", "").split(".")
    if len(parts) > 1 and parts[-2] == HEADERS and is_secret_header(parts[-1]):
        return True  # `--client.headers.X-Auth Token sk-...`: a stray word after it is not shown
    return parts[-1] in SECRET_CONTAINERS or any(p in SECRET_SEQUENCES or is_secret_key(p) for p in parts)


def url_for_message(text: str) -> str:
    """A URL as an error message may show it: without its query, fragment or user-info, where
    credentials sit, even when it is malformed (no scheme, spaces), which is what the message is about."""
    head = text.split("?", 1)[0].split("#", 1)[0]
    scheme, sep, rest = head.partition("://")
    if not sep:
        scheme, rest = "", head
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = f"{REDACTED}@{authority.rpartition('@')[2]}"
    shown = f"{scheme}{sep}{authority}{slash}{path}"
    return shown if shown == text else f"{shown}{'?' + REDACTED if '?' in text else ''}"


def is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    k = key.lower()
    return k in SECRET_NAMES or k.endswith(SECRET_SUFFIXES)


def redact(obj: Any) -> Any:
    """Return a copy of a JSON-like tree with every secret value replaced by REDACTED (a URL's
    password and secret query parameters included)."""
    if isinstance(obj, dict):
        return {k: _redact_item(k, v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return _redact_list(list(obj))
    if isinstance(obj, str):
        return redact_url(obj)
    return obj


def redact_url(text: str) -> str:
    """An http(s) URL with its user-info and secret query parameter values hidden; other text as is."""
    if not _url_secrets(text):
        return text
    parts = urlsplit(text)
    netloc = parts.netloc
    if "@" in netloc:  # `user:password@`, or a token alone as the user (`https://sk-...@host`)
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    pairs = []
    for pair in parts.query.split("&"):
        name, eq, value = pair.partition("=")
        pairs.append(f"{name}={REDACTED}" if eq and value and _secret_param(unquote(name)) else pair)
    return urlunsplit(parts._replace(netloc=netloc, query="&".join(pairs)))


def _url_secrets(text: str) -> list[str]:
    """The credentials in an http(s) URL (as written, and decoded): its password, secret parameters."""
    if not text[:8].lower().startswith(("http://", "https://")):
        return []
    try:
        parts = urlsplit(text)
        user, password = parts.username, parts.password
    except ValueError:
        return []
    found = []
    if password:
        # Clients send these as `Authorization: Basic base64(user:password)`: that form too.
        basic = f"{unquote(user or '')}:{unquote(password)}".encode()
        found += [password, unquote(password), base64.b64encode(basic).decode()]
    elif user:
        found += [user, unquote(user)]
    for pair in parts.query.split("&"):
        name, eq, value = pair.partition("=")
        if eq and value and _secret_param(unquote(name)):
            found += [value, unquote_plus(value)]
    return list(dict.fromkeys(found))


def _secret_param(name: str) -> bool:
    plain = name.lower().replace("-", "").replace("_", "")
    return is_secret_key(name) or plain in SECRET_QUERY_PARAMS or plain.endswith(SECRET_QUERY_SUFFIXES)


def is_plain_header(name: object) -> bool:
    return isinstance(name, str) and name.lower() in PLAIN_HEADERS


def is_secret_header(name: object, value: object = None) -> bool:
    """Whether a header's value is a secret: by its name (`value` None: whatever it holds), or
    by what it holds."""
    if not isinstance(name, str) or is_plain_header(name):
        return False
    lowered = name.lower()
    if any(part in lowered for part in CREDENTIAL_HEADER_PARTS) or value is None:
        return True
    return isinstance(value, str) and _CREDENTIAL_VALUE.fullmatch(value.strip()) is not None


def _redact_item(key: object, value: Any) -> Any:
    if key in SECRET_MAPPINGS and isinstance(value, dict):
        return {k: REDACTED if v not in (None, "") else v for k, v in value.items()}
    if key == HEADERS and isinstance(value, dict):
        return {
            k: REDACTED if v not in (None, "") and is_secret_header(k, v) else v for k, v in value.items()
        }
    if key in SECRET_CONTAINERS and isinstance(value, str):  # a mapping given as one JSON string
        return _redact_value(value, key)
    return REDACTED if is_secret_key(key) and value not in (None, "") else redact(value)


def _header_secrets(headers: dict[Any, Any]) -> list[str]:
    """The values of the headers that are not plain, and their credentials without a scheme
    (`Token abc`: abc too; a server may echo the bare credential)."""
    found = []
    for name, value in headers.items():
        if (
            value in (None, "")
            or not isinstance(value, str | int | float)
            or not is_secret_header(name, str(value))
        ):
            continue
        found.append(str(value))
        credential = str(value).strip().partition(" ")[2]
        if credential.strip():
            found.append(credential.strip())
    return found


def _flag_is_secret(item: object) -> bool:
    """`--api-key`, `--hf_token`, `-token`: a command-line flag whose value is a secret."""
    if not isinstance(item, str) or not item.startswith("-"):
        return False
    name = item.lstrip("-").split("=", 1)[0].replace("-", "_")
    return is_secret_key(name)


def _redact_list(items: list[Any]) -> list[Any]:
    return _command_items(items)[0]


def _command_items(items: list[Any]) -> tuple[list[Any], list[str]]:
    """A list redacted item by item as a command line reads it, and the secrets taken out of it:
    `--api-key VALUE`, `--api-key=VALUE`, `HF_TOKEN=VALUE` (an `env` prefix), and the same inside
    one item that is a whole command line (`sh -c "vllm serve M --api-key sk-..."`)."""
    out: list[Any] = []
    found: list[str] = []
    hide_next = False
    for item in items:
        if hide_next:
            out.append(REDACTED)
            if isinstance(item, str | int | float) and str(item):
                found.append(str(item))
            hide_next = False
        elif _flag_is_secret(item):
            flag, eq, value = item.partition("=")
            out.append(f"{flag}={REDACTED}" if eq else item)
            found += [value] if value else []
            hide_next = not eq
        elif isinstance(item, str) and _assigns_secret(item):
            name, _, value = item.partition("=")
            out.append(f"{name}={REDACTED}")
            found.append(value)
        elif isinstance(item, str) and " " in item.strip():
            shown, inner = _command_string(item)
            out.append(shown)
            found += inner
        else:
            out.append(redact(item))
    return out, found


def _assigns_secret(item: str) -> bool:
    """`HF_TOKEN=hf-...`: an environment assignment (as `env` takes it) to a secret-looking name."""
    name, eq, value = item.partition("=")
    return bool(eq and value) and name.isidentifier() and is_secret_key(name)


def _command_string(item: str) -> tuple[str, list[str]]:
    """One string that is a whole command line, redacted as its words (unchanged if none is secret)."""
    try:
        words = shlex.split(item)
    except ValueError:  # an unbalanced quote: words as the shell would roughly see them
        words = item.split()
    shown, found = _command_items(words)
    if not found and shown == words:
        return redact(item), []
    return " ".join(str(w) for w in shown), found


def secret_values(obj: Any) -> list[str]:
    """Every secret value in a JSON-like tree (to scrub from free text such as error messages)."""
    if isinstance(obj, str):
        return _url_secrets(obj)
    found: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in SECRET_MAPPINGS and isinstance(v, dict):
                found += [str(x) for x in v.values() if isinstance(x, str | int | float) and str(x)]
            elif k == HEADERS and isinstance(v, dict):
                found += _header_secrets(v)
            elif k in SECRET_CONTAINERS and isinstance(v, str) and isinstance(_parsed(v), dict | list):
                found += secret_values({k: _parsed(v)})
            elif is_secret_key(k) and isinstance(v, str | int | float) and str(v):
                found.append(str(v))
            else:
                found += secret_values(v)
    elif isinstance(obj, list | tuple):
        found += _command_items(list(obj))[1]
        found += [v for item in obj if isinstance(item, dict | list | str) for v in secret_values(item)]
    return found


def _parsed(text: str) -> Any:
    """A value as the command line reads it (YAML), or the text itself when it is not YAML."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def redact_argv(argv: list[str]) -> list[str]:
    """Hide the value of a secret-looking `--a.b.api_key` flag, every value set under a secret
    mapping (`--server.env.NAME v`), and secrets inside a mapping or list given whole
    (`--client.headers '{"Authorization": "Bearer x"}'`, `--server.env '{NAME: v}'`)."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        prev = argv[i - 1] if i else ""
        # After a flag without `=`, this is its value, unless it is the next flag (the first was a
        # switch); after a secret flag it is hidden either way.
        if prev.startswith("--") and "=" not in prev and (not arg.startswith("--") or _sets_secret(prev)):
            out.append(_redact_flag_value(prev, arg))
        elif arg.startswith("--") and "=" in arg:
            name, _, value = arg.partition("=")
            out.append(f"{name}={_redact_flag_value(name, value)}")
        else:
            out.append(_redact_value(arg, None))
    return out


def redact_params(params: dict[str, Any], tree: dict[str, Any]) -> dict[str, Any]:
    """Sweep parameters ({"server.env.TOKEN": value}, keyed by dotted config path into the run's
    raw `tree`) as the tree's redaction leaves them: a list item after `--api-key` in server.command
    too, which its path alone does not tell."""
    cleaned = redact(tree)
    out: dict[str, Any] = {}
    for key, value in params.items():
        node: Any = cleaned
        for part in key.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:  # not in the tree (cannot happen for a sweep's own parameters): judge by the path
                node = REDACTED if _sets_secret(key) else _redact_item(key.rsplit(".", 1)[-1], value)
                break
        out[key] = node
    return out


def _sets_secret(flag: str) -> bool:
    """`--client.api_key`, `--server.env.NAME`, `--server.command.4`: the flag's whole value is a
    secret, or may be (one item of a command line, out of its context: the value after --api-key?)."""
    *parents, key = flag.lstrip("-").split(".")
    one_item = bool(parents) and parents[-1] in SECRET_SEQUENCES and key.isdigit()
    header = bool(parents) and parents[-1] == HEADERS and is_secret_header(key)
    return one_item or header or any(p in SECRET_MAPPINGS for p in parents) or _flag_is_secret("--" + key)


def _redact_flag_value(flag: str, value: str) -> str:
    """The value given to `--a.b.c`, redacted as the config key it sets."""
    if _sets_secret(flag):
        return REDACTED
    return _redact_value(value, flag.rsplit(".", 1)[-1].lstrip("-"))


def _redact_value(text: str, key: str | None) -> str:
    """A value read as the command line reads it (YAML: `{...}`, `[...]` and `A: b` are mappings
    and lists), redacted as the value of `key`; a URL loses its credentials."""
    import orjson
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        # The command line keeps such a value as a string: only a {...} or [...] one may hide a secret.
        return REDACTED if text.lstrip().startswith(("{", "[")) else redact_url(text)
    if not isinstance(data, dict | list):
        return redact_url(text)
    cleaned = redact(data) if key is None else _redact_item(key, data)
    return text if cleaned == data else orjson.dumps(cleaned).decode()


def scrub_list(values: list[str]) -> list[str]:
    """Secret values ready for scrub_text: distinct, longest first (no partial leftovers)."""
    return sorted(set(values), key=len, reverse=True)


def scrub_text(text: str, secrets: list[str]) -> str:
    """Replace literal secret values in free text (e.g. an error message echoing a header)."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, REDACTED)
    return text
