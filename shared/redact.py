"""The one secret-redaction rule, used by the runner (config.yml, run.json argv) and the uploader.

A value is secret when its key's last word (camelCase, kebab and snake case split into words, case
ignored) is one of SECRET_WORDS or ends with one of SECRET_WORD_ENDINGS, wherever it sits
(additional_sampling_params, ...); when it follows such a flag in a command line (`--api-key VALUE`,
`--api-key=VALUE`, `--authToken VALUE`, also inside one `sh -c "..."` item, whose `;`, `&&`, `|`
end a word as the shell reads it) or is the value of a `NAME=VALUE` item with such a name
(`env HF_TOKEN=... vllm serve`), where a plural name counts too (`--api-keys K1 K2`, every value up
to the next flag; `API_TOKENS=...`) unless it counts things (`--max-tokens`); when it sits in a
mapping named in SECRET_MAPPINGS (every value of `server.env`: a server's environment carries
tokens under names no rule can guess); and a header
value whose name looks like a credential's (`Authentication`, `X-Auth`, `X-Session-Token`, `X-Pw`:
servers and gateways take credentials under many names) or whose value looks like one (a scheme and
a token, or one long opaque word), unless its name is in PLAIN_HEADERS. In a URL, the user-info and
secret-looking query parameters are secret. `max_tokens` and friends are not secrets: a config
key's last word is judged in the singular only (`tokens` is not `token`).

A config as config.yml shows it (redact_config) also loses every known secret value of the run (the
client's key, header and URL credentials, long server.env values) wherever else it appears, and any
value shaped like an Authorization header's (`Bearer sk-...` as wandb.notes or a tag).
"""

from __future__ import annotations

import base64
import functools
import html
import json
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit, urlunsplit

REDACTED = "<redacted>"
# The last word of a secret's name: `--key`, `accessKey`, `HF_TOKEN`, `--passwd`, `X-Auth`, `jwt`.
SECRET_WORDS = frozenset(
    {
        "apikey",
        "auth",
        "authorization",
        "cookie",
        "credential",
        "credentials",
        "jwt",
        "key",
        "pass",
        "passphrase",
        "passwd",
        "password",
        "pw",
        "pwd",
        "secret",
        "token",
    }
)
# Endings of a last word written as one (`ngrok-authtoken`, `openaiapikey`, `clientsecret`).
SECRET_WORD_ENDINGS = ("apikey", "token", "secret", "password", "passwd")
# Plural last words that name secrets on a command line only (`--api-keys K1 K2`: LMDeploy, FastChat;
# `API_TOKENS=a,b`). In a config key they do not: `max_tokens`, `num_tokens` count, `keys` lists names.
PLURAL_SECRET_WORDS = frozenset({"keys", "apikeys", "tokens", "secrets", "passwords", "passwds"})
PLURAL_SECRET_WORD_ENDINGS = ("apikeys", "tokens", "secrets", "passwords")
# Words that make a plural name a count (`--max-num-batched-tokens 8192`, `MAX_TOKENS=512`), also as
# the start of a name written as one word (`--maxtokens`).
COUNT_WORDS = ("max", "min", "num", "n", "total", "count", "number")
# The words of a name: `APIKey` -> API, Key; `hf_token` -> hf, token. Digits are left out, so
# `api_key_2` ends with `key`.
_NAME_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")
SECRET_MAPPINGS = frozenset({"env"})
# Request headers that never carry a credential (shown in config.yml and messages, never scrubbed).
PLAIN_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "connection",
        "content-length",
        "content-type",
        "openai-beta",
        "openai-organization",
        "openai-project",
        "traceparent",
        "tracestate",
        "user-agent",
        "x-correlation-id",
        "x-request-id",
    }
)
# Parts of a header name that say its value is a credential (compared without case, anywhere in it).
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
# Short words that say so only as a whole word (`X-Pass`, `X-Tenant-Pw`, `X-Tok`; not `X-Bypass`).
CREDENTIAL_HEADER_WORDS = frozenset({"pass", "pw", "pwd", "tok", "jwt", "sig"})
# A header value that looks like a credential whatever its name: `<scheme> <token>` or one opaque
# word of 16 printable characters or more, punctuation included (what keys, passwords and signed
# values look like; not `no-cache`, `high`).
_CREDENTIAL_VALUE = re.compile(r"\S+\s+\S{8,}|[!-~]{16,}")
HEADERS = "headers"
# URL query parameters that carry credentials under names the key rule does not catch, compared
# without case, `-` or `_` (`?code=`, signed URLs' `sig=` and `X-Amz-Signature`).
SECRET_QUERY_PARAMS = frozenset({"key", "sig", "code", "auth", "jwt"})
SECRET_QUERY_SUFFIXES = ("token", "signature", "secret", "password", "apikey", "credential", "authorization")
# Shorter secrets are not scrubbed from free text: they would take ordinary words and numbers with them.
MIN_SCRUBBED_LEN = 4
# A shorter secret (a server.env value such as `INFO`) is matched only as written: matched in any
# case it would blank ordinary words (`info`) all over error messages and logs.
MIN_CASELESS_LEN = 8


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
    prefix, user_info, rest = _split_user_info(text)
    head = re.split(r"[?#]", rest, maxsplit=1)[0]
    shown = f"{prefix}{'' if user_info is None else REDACTED + '@'}{head}"
    return shown if shown == text else f"{shown}{'?' + REDACTED if '?' in rest else ''}"


# What may follow the `@` that ends a URL's user-info: a host (name, IPv4, [IPv6]) and a port.
_HOST_AND_PORT = re.compile(r"(?:[\w.~%-]*|\[[0-9A-Fa-f:.]*\])(?::\d*)?")


def _split_user_info(text: str) -> tuple[str, str | None, str]:
    """A URL as (`scheme://`, its user-info or None, the rest from the host on). The user-info runs
    to the last `@` that a host follows: a password may hold `/`, `?`, `#` or `@`, which a URL parser
    takes for the end of the authority, and an error message shows the URL as written. Such a
    user-info has its `:` before any `/` (`u:pa/ss@h`); an `@` in a path (`models/gpt@latest/chat`,
    `models/claude@2024:predict`) is not one, nor is one in a query value of a well-formed URL
    (`?email=a@b.com`)."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    prefix = f"{scheme}{sep}"
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    at = len(rest)
    while (at := rest.rfind("@", 0, at)) >= 0:
        host = re.split(r"[/?#]", rest[at + 1 :], maxsplit=1)[0]
        if _HOST_AND_PORT.fullmatch(host) and _may_be_user_info(rest[:at], authority):
            return prefix, rest[:at], rest[at + 1 :]
    if "@" in authority:  # a malformed host (`ho st`): the authority as a parser reads it
        user_info, _, host = authority.rpartition("@")
        return prefix, user_info, host + rest[len(authority) :]
    return prefix, None, rest


def _may_be_user_info(before: str, authority: str) -> bool:
    """Whether the text before an `@` may be a URL's user-info: `user`, `user:pass`, or a password
    holding `/` (`u:pa/ss`), but not a host and path (`api.example.com/v1/models/gpt`)."""
    slash = before.find("/")
    if slash >= 0 and not 0 <= before.find(":") < slash:
        return False
    return not _in_query_value(before, authority)


def _in_query_value(before: str, authority: str) -> bool:
    """Whether an `@` after `before` sits in a query value (`h/v1?email=a`) of a URL whose host
    is well formed (a password with `?`, `u:pa?ss@h`, leaves `pa` where a port would be)."""
    query = before.partition("?")[2]
    host = authority.rpartition("@")[2]
    return bool(_HOST_AND_PORT.fullmatch(host)) and re.match(r"[\w.~%-]+=", query) is not None


def is_secret_key(key: object) -> bool:
    """Whether a key or flag name (`hf_token`, `X-Api-Key`, `accessKey`, `--passwd`) names a secret."""
    if not isinstance(key, str):
        return False
    words = _NAME_WORD.findall(key)
    last = words[-1].lower() if words else ""
    return last in SECRET_WORDS or last.endswith(SECRET_WORD_ENDINGS)


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
    # `user:password@`, or a token alone as the user (`https://sk-...@host`): hidden whole.
    prefix, user_info, rest = _split_user_info(text)
    parts = urlsplit(prefix + rest)
    pairs = []
    for pair in parts.query.split("&"):
        name, eq, value = pair.partition("=")
        pairs.append(f"{name}={REDACTED}" if eq and value and _secret_param(unquote(name)) else pair)
    shown = urlunsplit(parts._replace(query="&".join(pairs)))
    return shown if user_info is None else shown.replace("://", f"://{REDACTED}@", 1)


def _url_secrets(text: str) -> list[str]:
    """The credentials in an http(s) URL (as written, and decoded): its password, secret parameters.
    The URL is read both as a parser reads it and with the widest user-info (_split_user_info): a
    client may use either, and an `@` in the query must not hide the real password."""
    if not text[:8].lower().startswith(("http://", "https://")):
        return []
    prefix, user_info, rest = _split_user_info(text)
    try:
        standard, widest = urlsplit(text), urlsplit(prefix + rest)
    except ValueError:
        return []
    found = _user_info_secrets(user_info or "")
    if "@" in standard.netloc:
        found += _user_info_secrets(standard.netloc.rpartition("@")[0])
    for pair in f"{standard.query}&{widest.query}".split("&"):
        name, eq, value = pair.partition("=")
        if eq and value and _secret_param(unquote(name)):
            found += [value, unquote_plus(value)]
    return list(dict.fromkeys(found))


def _user_info_secrets(user_info: str) -> list[str]:
    """A URL user-info's password (as written, decoded, and as the Basic credentials clients send
    it as), or the user alone when there is no password (a token: `https://sk-...@host`)."""
    user, _, password = user_info.partition(":")
    if password:
        basic = f"{unquote(user)}:{unquote(password)}".encode()
        return [password, unquote(password), base64.b64encode(basic).decode()]
    if not user:
        return []
    # Sent as Basic credentials too, with an empty password (runner's url_credentials, httpx).
    return [user, unquote(user), base64.b64encode(f"{unquote(user)}:".encode()).decode()]


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
    if any(word.lower() in CREDENTIAL_HEADER_WORDS for word in _NAME_WORD.findall(name)):
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
        found += _basic_credentials(str(value))
    return found


def _basic_credentials(value: str) -> list[str]:
    """`Basic base64(user:password)`: the decoded pair and password, as a server may echo them."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return []
    try:
        pair = base64.b64decode(token.strip(), validate=True).decode()
    except ValueError:  # not base64, or not text (binascii.Error, UnicodeDecodeError)
        return []
    password = pair.partition(":")[2]
    return [pair, password] if password else [pair]


def _names_secrets(name: str) -> bool:
    """Whether a command-line flag's or an assignment's name names secrets: as a config key does, or
    with a plural last word (`api-keys`, `HF_TOKENS`) unless the name counts (`max-tokens`)."""
    if is_secret_key(name):
        return True
    words = [w.lower() for w in _NAME_WORD.findall(name)]
    if not words or any(w in COUNT_WORDS for w in words[:-1]) or words[-1].startswith(COUNT_WORDS[:3]):
        return False
    return words[-1] in PLURAL_SECRET_WORDS or words[-1].endswith(PLURAL_SECRET_WORD_ENDINGS)


def _plural_flag(item: str) -> bool:
    """`--api-keys`: a secret flag that may take several values (argparse nargs), not `--api-key`."""
    return not is_secret_key(item.lstrip("-").split("=", 1)[0].replace("-", "_"))


def _flag_is_secret(item: object) -> bool:
    """`--api-key`, `--hf_token`, `-token`, `--api-keys`: a command-line flag whose value is a secret."""
    if not isinstance(item, str) or not item.startswith("-"):
        return False
    return _names_secrets(item.lstrip("-").split("=", 1)[0].replace("-", "_"))


def _redact_list(items: list[Any]) -> list[Any]:
    return _command_items(items)[0]


def _command_items(items: list[Any]) -> tuple[list[Any], list[str]]:
    """A list redacted item by item as a command line reads it, and the secrets taken out of it:
    `--api-key VALUE`, `--api-key=VALUE`, `HF_TOKEN=VALUE` (an `env` prefix), and the same inside
    one item that is a whole command line (`sh -c "vllm serve M --api-key sk-..."`)."""
    out: list[Any] = []
    found: list[str] = []
    hide_next = hide_run = after_c = False
    for item in items:
        secret_word = _flag_is_secret(item) or (isinstance(item, str) and _assigns_secret(item))
        # After `--api-keys`, every value up to the next flag or shell operator (`K1 K2; exec s`).
        hide_run = hide_run and not (isinstance(item, str) and item.startswith(_VALUES_END))
        if hide_next or hide_run:
            out.append(REDACTED)
            if isinstance(item, str | int | float) and str(item):
                found.append(str(item))
            hide_next = False
        # After `sh -c` an item is a script even if it starts `X_KEY=v;`; elsewhere such an item is one
        # word (`--api-key=a;b` passes `a;b`), hidden whole.
        elif isinstance(item, str) and (after_c or not secret_word) and _SHELL_BREAK.search(item.strip()):
            shown, inner = _command_string(item)
            out.append(shown)
            found += inner
        elif _flag_is_secret(item):
            flag, eq, value = item.partition("=")
            out.append(f"{flag}={REDACTED}" if eq else item)
            found += _value_and_head(value) if value else []
            hide_run = not eq and _plural_flag(item)
            hide_next = not eq and not hide_run
        elif isinstance(item, str) and _assigns_secret(item):
            name, _, value = item.partition("=")
            out.append(f"{name}={REDACTED}")
            found += _value_and_head(value)
        else:
            out.append(redact(item))
        after_c = isinstance(item, str) and _SHELL_C_FLAG.fullmatch(item) is not None
    return out, found


# `sh -c`, `bash -lc`, `sh -ec`: the flag after which the shell takes its script.
_SHELL_C_FLAG = re.compile(r"-[a-z]*c")
# What ends the values of a flag that takes several: the next flag, a shell operator.
_VALUES_END = ("-", ";", "&", "|", "(", ")", "<", ">")


def _value_and_head(value: str) -> list[str]:
    """A secret value, and its first shell word when it may end a script's word (`v;exec s`): the
    same item may be an argument as is or a script a shell splits, and a server may echo either."""
    words = _shell_words(value) if _SHELL_BREAK.search(value) else []
    return [value, *words[:1]]


def _assigns_secret(item: str) -> bool:
    """`HF_TOKEN=hf-...`: an environment assignment (as `env` takes it) to a secret-looking name."""
    name, eq, value = item.partition("=")
    return bool(eq and value) and name.isidentifier() and _names_secrets(name)


# What ends a word in a shell script: blanks and the control operators (`;`, `&&`, `|`, `&`).
_SHELL_BREAK = re.compile(r"[\s;&|]")


def _shell_words(item: str) -> list[str]:
    """A shell script's words as the shell splits them: `X_KEY=v; exec s` gives `X_KEY=v`, `;`, ..."""
    lexer = shlex.shlex(item, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote: words as the shell would roughly see them
        return re.findall(r"[;&|()<>]+|[^\s;&|()<>]+", item)


def _command_string(item: str) -> tuple[str, list[str]]:
    """One string that is a whole command line, redacted as its words (unchanged if none is secret)."""
    words = _shell_words(item)
    if len(words) < 2:  # one word (`;`, `'a b'` unquoted): nothing to split further
        return redact(item), []
    shown, found = _command_items(words)
    if not found and shown == words:
        return redact(item), []
    return " ".join(str(w) for w in shown), found


# Environment variables whose names read as secrets but whose values are not: the working
# directory (`PWD`: its last word `pwd` names a password elsewhere), scrubbed from every message.
PLAIN_ENV = frozenset({"PWD", "OLDPWD"})


def environment_secrets(env: Mapping[str, str]) -> list[str]:
    """The secret values of an environment: variables named like secrets (HF_TOKEN, WANDB_API_KEY)
    and credentials in URLs (HTTPS_PROXY)."""
    return secret_values({name: value for name, value in env.items() if name not in PLAIN_ENV})


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


# An Authorization-style value: a scheme and one credential (`Bearer sk-...`), or Digest's
# `name=value` list. Not any text that starts with such a word: "Basic arithmetic questions ..." in a
# system prompt was hidden, and its words scrubbed from every uploaded record.
# The token must look like one: a digit, mixed case or a symbol of base64/keys ("Token throughput" in
# notes is prose).
AUTH_VALUE = re.compile(
    r"^\s*(?:(?i:bearer|basic|token|apikey|api-key)\s+"
    r"(?=\S*(?:\d|[A-Z]\S*[a-z]|[a-z]\S*[A-Z]|[+/=_.~-]))\S{8,}\s*$"
    r"|(?i:digest)\s+\w+=)"
)


def auth_value_secrets(text: str) -> list[str]:
    """An Authorization-style value (AUTH_VALUE) and its credential without the scheme; [] for other
    text. Such a value is a secret under any key (wandb.notes, a tag, a sampling parameter)."""
    if not AUTH_VALUE.match(text):
        return []
    return [text, text.split(None, 1)[1].strip()]


def redact_config(tree: Any, known: Iterable[str] = ()) -> Any:
    """A config tree as config.yml, its hash and sweep labels show it: redact's rule, a value shaped
    like an Authorization header's hidden under any key, and every secret value the run knows
    (config_secret_values, and `known`: the client's key, which the tree holds as REDACTED) hidden
    wherever else it appears, whole or inside a value (`--served-key K`, a URL, a script)."""
    return _redacted_with(tree, known_secrets(tree, known))


def known_secrets(tree: Any, known: Iterable[str] = ()) -> list[str]:
    """The secret values to hide wherever they appear in a config tree's other values and in text
    about its run: config_secret_values and `known`, from MIN_CASELESS_LEN characters (_long),
    ready for scrub_text."""
    return scrub_list(_long([*known, *config_secret_values(tree)]))


def _long(values: list[str]) -> list[str]:
    """Known secrets worth hiding elsewhere in a config: from MIN_CASELESS_LEN characters. A short
    key (`EMPTY`, `test`, vLLM's placeholders) is no credential to protect, and hiding it inside other
    values would rewrite a model name (`test-model`) or a path in config.yml and on W&B."""
    return [v for v in values if len(v) >= MIN_CASELESS_LEN]


def _redacted_with(tree: Any, secrets: list[str]) -> Any:
    return scrub_content(_hide_auth_values(redact(tree)), secrets)


def config_secret_values(tree: Any) -> list[str]:
    """The secret values of a config tree to hide wherever they appear in it: secret_values, but a
    server.env value only from MIN_CASELESS_LEN characters (secret by where it sits, not by its
    name: a port or a mode such as `8000` or `offline` would take the ready_url's port or
    wandb.mode with it, and config.yml would not read back), and Authorization-style values."""
    found = secret_values(_long_mapping_values(tree)) + _auth_values_in(tree)
    return [v for v in found if v and v != REDACTED]


def _long_mapping_values(obj: Any) -> Any:
    """A copy of a tree without the values shorter than MIN_CASELESS_LEN of its SECRET_MAPPINGS."""
    if isinstance(obj, dict):
        return {
            k: {n: v for n, v in value.items() if len(str(v)) >= MIN_CASELESS_LEN}
            if k in SECRET_MAPPINGS and isinstance(value, dict)
            else _long_mapping_values(value)
            for k, value in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [_long_mapping_values(v) for v in obj]
    return obj


def _auth_values_in(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return auth_value_secrets(obj)
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list | tuple) else ()
    return [found for v in values for found in _auth_values_in(v)]


def _hide_auth_values(obj: Any) -> Any:
    if isinstance(obj, str):
        return REDACTED if AUTH_VALUE.match(obj) else obj
    if isinstance(obj, dict):
        return {k: _hide_auth_values(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_hide_auth_values(v) for v in obj]
    return obj


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


def redact_params(params: dict[str, Any], tree: dict[str, Any], known: Iterable[str] = ()) -> dict[str, Any]:
    """Sweep parameters ({"server.env.TOKEN": value}, keyed by dotted config path into the run's
    raw `tree`) as the tree's redaction (redact_config) leaves them: a list item after `--api-key` in
    server.command too, which its path alone does not tell, one equal to the run's api_key, and one
    holding a `known` secret (another run's of the sweep)."""
    secrets = known_secrets(tree, known)
    cleaned = _redacted_with(tree, secrets)
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
                node = scrub_content(_hide_auth_values(node), secrets)
                break
        out[key] = node
    return out


def _sets_secret(flag: str) -> bool:
    """`--client.api_key`, `--server.env.NAME`, `--server.command.4`: the flag's whole value is a
    secret, or may be (one item of a command line, out of its context: the value after --api-key?)."""
    *parents, key = flag.lstrip("-").split(".")
    one_item = bool(parents) and parents[-1] in SECRET_SEQUENCES and key.isdigit()
    header = bool(parents) and parents[-1] == HEADERS and is_secret_header(key)
    in_mapping = any(p in SECRET_MAPPINGS for p in parents)
    # A config key: named by the singular words only (`--client.max_tokens` is a count).
    return one_item or header or in_mapping or is_secret_key(key.split("=", 1)[0].replace("-", "_"))


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
    """Replace secret values in free text (e.g. an error message echoing a header), in the escaped
    forms a client or server may print them in (_echoed_forms) and, for secrets of
    MIN_CASELESS_LEN characters or more, in any case (`bearer sk-...` echoed lower-cased, `%3d`).
    Overlapping matches are hidden as one, so no part of a secret is left."""
    exact, caseless = _scrub_forms(tuple(s for s in secrets if s and len(s) >= MIN_SCRUBBED_LEN))
    if not exact and not caseless:
        return text
    # str.find per form, on the text lower-cased once: C-speed scans, where one regex alternation of
    # all forms ignoring case was ~40 times slower on a large server log.
    lowered = _lower(text) if caseless else text
    found = [(i, i + len(f)) for f in exact for i in _find_all(text, f)]
    found += [(i, i + len(f)) for f in caseless for i in _find_all(lowered, f)]
    spans: list[list[int]] = []
    for start, stop in sorted(found):
        if spans and start < spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], stop)
        else:
            spans.append([start, stop])
    pieces: list[str] = []
    done = 0
    for start, stop in spans:
        pieces += [text[done:start], REDACTED]
        done = stop
    return "".join([*pieces, text[done:]])


def _find_all(text: str, part: str) -> Iterator[int]:
    at = text.find(part)
    while at >= 0:
        yield at
        at = text.find(part, at + 1)


def _lower(text: str) -> str:
    """Text lower-cased character for character: a character whose lower case is longer (`İ`) stays,
    so a match's place in the lower-cased text is its place in the text."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(c if len(c.lower()) > 1 else c.lower() for c in text)


@functools.lru_cache(maxsize=64)
def _scrub_forms(secrets: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every form of the secrets: those matched as written, and those matched in any case
    (lower-cased). Callers scrub many texts with the same list, hence the cache."""
    exact = {form for s in secrets if len(s) < MIN_CASELESS_LEN for form in _echoed_forms(s)}
    caseless = {_lower(form) for s in secrets if len(s) >= MIN_CASELESS_LEN for form in _echoed_forms(s)}
    return tuple(exact), tuple(caseless)


# The characters httpx leaves as they are in a URL's user-info and query (any other is percent-encoded;
# RFC 3986 unreserved characters are always kept): a password `a=b^` shows as `a%3Db%5E`.
_QUERY_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in '"#<>')
_USER_INFO_SAFE = "".join(c for c in _QUERY_SAFE if c not in "?`{}/;=@[\\]^|")
_PASSWORD_SAFE = _USER_INFO_SAFE.replace(":", "")
_PERCENT_ESCAPE = re.compile(r"(%[0-9A-Fa-f]{2})")


def _echoed_forms(secret: str) -> set[str]:
    """A secret as text may show it: as is; percent-encoded as httpx encodes a URL's password or
    query value (existing `%xx` kept) or fully; JSON-escaped (`\\u00e9`, `\\"`, `\\/`); HTML-escaped."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret, safe="")}
    for safe in (_QUERY_SAFE, _USER_INFO_SAFE, _PASSWORD_SAFE, ""):
        parts = _PERCENT_ESCAPE.split(secret)  # odd items: `%xx` escapes, which httpx leaves alone
        forms.add("".join(p if i % 2 else quote(p, safe=safe) for i, p in enumerate(parts)))
    for escaped in (json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]):
        forms |= {escaped, escaped.replace("/", "\\/")}
    html_escaped = html.escape(secret)
    forms |= {html_escaped, html_escaped.replace("&#x27;", "&#39;"), html.escape(secret, quote=False)}
    return forms


def scrub_content(value: Any, secrets: list[str]) -> Any:
    """A trace line's content (a prompt, or chat messages) with `secrets` scrubbed from every
    string in it: each as it was sent, so a secret is matched whole (not through its JSON form)."""
    if isinstance(value, str):
        return scrub_text(value, secrets)
    if isinstance(value, list):
        return [scrub_content(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: scrub_content(v, secrets) for k, v in value.items()}
    return value
