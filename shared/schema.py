"""A small validator that builds config dataclasses from plain YAML data.

Twenty-odd lines of type dispatch instead of a framework: each dataclass field's type hint says what
is accepted, `field(metadata=...)` adds ranges and variant tables, and every error names the full key
path, the bad value (unless it may be a secret) and what is allowed. The same walk exports a JSON schema.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import difflib
import math
import re
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import orjson
from veeksha.shared.errors import ConfigError
from veeksha.shared.redact import REDACTED, may_hold_secret, url_for_message
from veeksha.shared.secret import Secret

T = TypeVar("T")

# Integers must survive JSON encoding, numpy seeding and C code, which all stop at 64 bits.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Free-form values (request parameters) deeper than this are refused; a request body is never this deep.
MAX_NESTING = 64

# Admission limits: bounds that exist only to refuse a run that could not work (a million sessions, a
# session of 10**8 requests). They are checked while a NEW run is configured (a user's file and flags,
# config_loader's build_benchmark_config and load_capacity_search, inside `admitting()`), never when a
# config.yml already written is read back: a run made before a limit existed still reads as it ran.
_ADMITTING: contextvars.ContextVar[bool] = contextvars.ContextVar("admitting", default=False)


@contextlib.contextmanager
def admitting() -> Iterator[None]:
    """Within it, build() also checks admission limits: `spec(admission=True)`'s `le` and a
    dataclass's `admission_check()`."""
    token = _ADMITTING.set(True)
    try:
        yield
    finally:
        _ADMITTING.reset(token)


def spec(
    *,
    default: Any = dataclasses.MISSING,
    factory: Any = dataclasses.MISSING,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    also: tuple[float, ...] = (),
    bound: str = "",
    nonempty: str = "",
    variants: dict[str, type] | None = None,
    doc: str = "",
    admission: bool = False,
) -> Any:
    """A dataclass field with validation metadata (ranges, `type:` variant table, docs).

    `also`: sentinel values allowed outside the range (-1 = "wait for in-flight requests");
    `bound`: what the range means, for the error (`seconds: a week`); `nonempty`: an empty string is
    refused, and this says what to give instead. On a variant field (a length generator) `le` bounds
    the values the built generator reaches. `admission`: `le` is an admission limit, checked only
    while `admitting()` (a new run), not when a written config.yml is read back."""
    meta = {
        "gt": gt,
        "ge": ge,
        "le": le,
        "also": also,
        "bound": bound,
        "nonempty": nonempty,
        "variants": variants,
        "doc": doc,
        "admission": admission,
    }
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# Text that may be a URL, whose user-info, query or fragment may hold a credential: a scheme, an `@`,
# or a `?name=` / `#name=` (a token in a query or a fragment). Other text is shown as written: cut at
# its `#` as a URL is, `--runtime.max_sessions '5 # five'` was said to be '5 '.
_URL_LIKE = re.compile(r"://|@|[?#][^\s=]*=")


def _fail(path: str, value: Any, allowed: str) -> ConfigError:
    if may_hold_secret(path):  # a header, a command line, an environment: say where, never what
        shown = "its value (not shown: it may hold a secret)"
    elif isinstance(value, dict | list):
        shown = type(value).__name__
    elif isinstance(value, str) and _URL_LIKE.search(value):
        shown = repr(url_for_message(value))
    else:
        shown = repr(value)
    if len(shown) > 200:  # a 3000-digit number stays a readable one-line error
        shown = f"{shown[:60]}... ({len(shown)} characters)"
    return ConfigError(f"config error at {path or '<root>'}: {shown} is not allowed; {allowed}")


def _not_a_container(path: str, value: Any, expected: str, *, mapping: bool = True) -> ConfigError:
    """A value where a mapping (or, not `mapping`, a list) was `expected`: its kind, never its text.
    A section given as text is often a flag that was not valid YAML (`--client '{api_key: sk-...'`
    stays a string) or `key=value`, so the text may be a secret, whatever the key path says."""
    if isinstance(value, dict | list):  # the wrong container: its type says everything
        return _fail(path, value, expected)
    return ConfigError(
        f"config error at {path or '<root>'}: its value (not shown: it may hold a secret) is not "
        f"allowed; {expected}, got {_kind_of(value, mapping)}"
    )


def _kind_of(value: Any, mapping: bool) -> str:
    """`a string ...`, `a number`: what a value is, with what a string was probably meant to be."""
    if not isinstance(value, str):
        return f"a {_yaml_kind(value) or type(value).__name__}"
    text = value.strip()
    if text.startswith(("{", "[")):
        return (
            f"a string that starts with '{text[0]}' but is not valid YAML: check its brackets and "
            "quotes, and put a space after each colon"
        )
    if not mapping:  # a command line as one string: `--api-key=...` is no `key=value` mistake
        return "a string"
    if "=" in text:
        return "a string with '=': write key: value (a colon and a space), not key=value"
    if re.search(r":\S", text):
        return "a string with ':' and no space after it: write key: value"
    return "a string"


# `{api_key:sk-x}` is the one key 'api_key:sk-x' with no value: YAML needs a space after the colon.
# `name=value` written as a key is the same mistake, and so is `{api_key sk-x}` (the colon left out):
# the key 'api_key sk-x'. The text after the sign (or the first space) may be a secret.
_JOINED_KEY = re.compile(r"[:=](?=.)|\s", re.DOTALL)
# How long a key name (the part before the sign) may be to be shown; longer is not a name.
MAX_SHOWN_NAME = 64


def _joined_key(key: str) -> tuple[str, str] | None:
    """(name, sign) when `key` is a name and a value joined by ':' or '=' (text follows the sign),
    or by whitespace (the sign is that character)."""
    match = _JOINED_KEY.search(key)
    return (key[: match.start()], match.group()) if match else None


def _shown_name(name: str) -> str:
    return name if name.isprintable() and len(name) <= MAX_SHOWN_NAME else "…"


def key_for_message(key: str | int) -> str:
    """A mapping key as an error may show it: a `name:value`, `name=value` or `name value` key cut
    after the sign (the first space), never its rest."""
    joined = _joined_key(key) if isinstance(key, str) else None
    if joined is None:
        return str(key)
    name, sign = joined
    return f"{_shown_name(name)}{' ' if sign.isspace() else sign}…"


def _check_key(path: str, key: Any, value: Any = None, *, plain_name: bool = True) -> None:
    """Refuse a key that is a name and a value joined by ':', '=' or a space (see _JOINED_KEY),
    never showing the value. Where a plain name is expected any such key is refused; in free-form
    data (a JSON schema may name a property `a:b`) only one without a value, the mark of the
    missing space or colon."""
    joined = _joined_key(key) if isinstance(key, str) else None
    if joined is None or (not plain_name and value is not None):
        return
    name, sign = joined
    what = {"env": "variable name", "headers": "header name"}.get(path.rpartition(".")[2], "key")
    sign_words = {":": "':'", "=": "'='", " ": "a space in it"}.get(sign, "whitespace in it")
    raise ConfigError(
        f"config error at {path or '<root>'}: a {what} with {sign_words} is not allowed "
        f"({key_for_message(key)}: the rest is not shown, it may be a secret); "
        f"{_key_fix(sign, name, what, value is None)}"
    )


def _key_fix(sign: str, name: str, what: str, no_value: bool) -> str:
    if sign == ":":
        return "put a space after the colon: name: value"
    if sign == "=":
        return "write name: value, not name=value"
    if no_value:  # `{api_key sk-...}`: the colon left out
        return f"did you forget the ':' after '{_shown_name(name)}'? write name: value"
    return f"a {what} has no spaces or line breaks; remove them"


def _join(path: str, key: str | int) -> str:
    key = key_for_message(key)  # every error names the key, and this is how it is shown
    return f"{path}.{key}" if path else key


def build(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass `cls` from a mapping, validating every key recursively."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _not_a_container(path, data, f"expected a mapping of {cls.__name__} keys (YAML {{key: value}})")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in _fields_of(cls) if f.init}
    for key in data:
        _check_key(path, key, data[key])
        if key not in fields:
            raise ConfigError(
                f"config error at {_join(path, key)}: unknown key; allowed keys: "
                f"{', '.join(sorted(fields))}{_unknown_key_hint(str(key), path, fields, hints)}"
            )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            value = _with_default_type(f, data[name])
            kwargs[name] = convert(hints[name], value, _join(path, name), f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config error at {_join(path, name)}: required key is missing")
        else:
            kwargs.update(_typed_default(name, f, hints[name]))
    obj = cls(**kwargs)
    for check_name in ("check", "admission_check") if _ADMITTING.get() else ("check",):
        check = getattr(obj, check_name, None)
        _report(check() if check is not None else None, path, fields)
    return obj


def _unknown_key_hint(
    key: str, path: str, fields: dict[str, dataclasses.Field[Any]], hints: dict[str, Any]
) -> str:
    """A key of one section only, written a level too high (`wandb:` at the top of a capacity search,
    whose benchmark config holds it): that section's key, in full. Else a near spelling, if any."""
    homes = [name for name, f in fields.items() if key in _section_keys(hints[name], f.metadata)]
    if len(homes) == 1:  # (`type`, a key of many sections, names none)
        return f"; did you mean '{_join(path, homes[0])}.{key}'?"
    return _did_you_mean(key, list(fields))


def _section_keys(tp: Any, meta: typing.Mapping[str, Any]) -> set[str]:
    """The keys a field's mapping takes (every variant's), or none for a value or a list."""
    classes = list((meta.get("variants") or {}).values()) or [_is_optional(tp)[1]]
    return {f.name for c in classes if dataclasses.is_dataclass(c) for f in dataclasses.fields(c) if f.init}


def _report(problem: str | None, path: str, fields: dict[str, dataclasses.Field[Any]]) -> None:
    if problem:
        # A problem with one of the keys (`path: ...`) is reported at that key's full path.
        key, sep, rest = problem.partition(": ")
        if sep and key in fields:
            raise ConfigError(f"config error at {_join(path, key)}: {rest}")
        raise ConfigError(f"config error at {path or '<root>'}: {problem}")


def _typed_default(name: str, f: dataclasses.Field[Any], hint: Any) -> dict[str, Any]:
    """An omitted field's default, when its type would change it: `value: float = 1` is 1.0 once
    written to config.yml and read back, so the same config would hash apart from its own file."""
    if type(f.default) is int and _is_optional(hint)[1] is float:
        return {name: float(f.default)}
    return {}  # the dataclass's own default


def _fields_of(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a config dataclass")
    return dataclasses.fields(cls)


def _with_default_type(f: dataclasses.Field[Any], value: Any) -> Any:
    """A variant mapping without `type:` keeps the default's variant (`--a.b.rate 5` needs no type)."""
    if not f.metadata.get("variants") or not isinstance(value, dict) or "type" in value:
        return value
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    kind = getattr(default, "type", None)
    return {"type": kind, **value} if kind is not None else value


def _is_optional(tp: Any) -> tuple[bool, Any]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
    return False, tp


def convert(tp: Any, value: Any, path: str, meta: typing.Mapping[str, Any] | None = None) -> Any:
    """Check `value` against type hint `tp` (and the field's `meta`) and return the converted value.

    The order matters and is part of the contract: a missing value first, then a `type:` variant
    table, then dataclasses, then one converter per type (by generic origin, else by the type itself).
    """
    meta = meta or {}
    optional, tp = _is_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise _fail(path, value, f"a value is required ({describe(tp, meta)})")
    if tp not in _TEXT_TYPES:  # a text field refuses any respelled number, with its own hint
        _check_leading_zero(value, path)
    variants = meta.get("variants")
    # On a list field the variant table describes the items; the list converter passes it down.
    if variants and get_origin(tp) is not list:
        built = _convert_variant(variants, value, path)
        _check_reach(built, path, meta)
        return built
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    converter = _BY_ORIGIN.get(get_origin(tp)) or _BY_TYPE.get(tp)
    if converter is None:
        raise TypeError(f"unsupported config type {tp!r} at {path}")
    return converter(tp, value, path, meta)


def _check_leading_zero(value: Any, path: str) -> None:
    """Refuse `0042`, which YAML 1.1 reads as octal 34: the run would use a number nobody wrote.
    Refused, not read as decimal: a YAML tool reading the same file would still see 34."""
    if not isinstance(value, LeadingZeroInt):
        return
    raise ConfigError(
        f"config error at {path}: {value.written} is not allowed; write {value.decimal()} without the "
        f"leading zero (YAML 1.1 reads {value.written} as the octal number {int(value)}), or quote it "
        "if it is text"
    )


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _convert_variant(variants: dict[str, type], value: Any, path: str) -> Any:
    """A `type:` variant table: the mapping's `type` picks the dataclass (implicit if only one). A bare
    number where the table has a `fixed` variant means that constant (`reasoning_tokens: 64`)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and "fixed" in variants:
        value = {"type": "fixed", "value": value}
    if not isinstance(value, dict):
        raise _not_a_container(path, value, f"expected a mapping with 'type' in {sorted(variants)}")
    kind = value.get("type", next(iter(variants)) if len(variants) == 1 else None)
    if kind not in variants:
        raise ConfigError(
            f"config error at {_join(path, 'type')}: {kind!r} is not allowed; "
            f"choose one of {', '.join(sorted(variants))}{_did_you_mean(str(kind), list(variants))}"
        )
    return build(variants[kind], value, path)


# Every converter takes (type hint, value, key path, field metadata) and returns the built value.
_Converter = typing.Callable[[Any, Any, str, typing.Mapping[str, Any]], Any]


def _convert_literal(tp: Any, value: Any, path: str, meta: typing.Mapping[str, Any]) -> Any:
    choices = get_args(tp)
    # By type too: 0 == False and 1.0 == True, but `enabled: 0` is not `enabled: false`.
    if not any(value == c and type(value) is type(c) for c in choices):
        hint = _did_you_mean(str(value), [str(a) for a in choices])
        raise _fail(path, value, f"choose one of {', '.join(map(str, choices))}{hint}")
    return value


def _convert_list(tp: Any, value: Any, path: str, meta: typing.Mapping[str, Any]) -> list[Any]:
    if not isinstance(value, list):
        expected = f"expected a list ({describe(tp, meta)}), e.g. YAML [a, b]"
        raise _not_a_container(path, value, expected, mapping=False)
    (item,) = get_args(tp)
    # The metadata (ranges, variant table) applies to each item.
    return [convert(item, v, _join(path, i), meta) for i, v in enumerate(value)]


def _convert_dict(tp: Any, value: Any, path: str, meta: typing.Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(value, str):  # a mapping may also be given as a JSON string
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise _not_a_container(
                path, value, "expected a mapping (YAML {key: value}, or a JSON object)"
            ) from None
    if not isinstance(value, dict):
        raise _not_a_container(path, value, "expected a mapping (YAML {key: value})")
    _, item = get_args(tp)
    out: dict[str, Any] = {}
    for k, v in value.items():  # a key is text too: `0123:` would have become the key '83'
        _check_key(path, k, v)
        key = k if isinstance(k, str) else _as_written(k)
        if key is None:
            raise _not_text(_join(path, k), k, what="as a key ")
        # The field's metadata describes the mapping, not its values: they are converted without it.
        out[key] = convert(item, v, _join(path, key))
    return out


def _convert_any(tp: Any, value: Any, path: str, meta: typing.Mapping[str, Any]) -> Any:
    _check_plain_numbers(value, path)
    return plain(value)


def _convert_bool(tp: Any, value: Any, path: str, meta: typing.Mapping[str, Any]) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, value, "expected true or false")
    return value


def _convert_int(tp: Any, value: Any, path: str, meta: typing.Mapping[str, Any]) -> int:
    expected = f"an integer{_range_text(meta)}"
    _check_number(value, path, expected)
    if value != int(value):
        raise _fail(path, value, f"expected {expected}")
    _check_number(int(value), path, expected)  # 1e30 is a whole number, but not a 64-bit one
    _check_range(value, path, meta)
    return int(value)


def _convert_float(tp: Any, value: Any, path: str, meta: typing.Mapping[str, Any]) -> float:
    _check_number(value, path, f"a number{_range_text(meta)}")
    _check_range(value, path, meta)
    return float(value)


# YAML 1.1 reads unquoted 0123 as 83, 1.10 as 1.1, 12:30 as 750 and yes as true. A string field that
# turned them back into text would send text the user never wrote, so a number or a boolean is refused.
QUOTE_HINT = (
    "expected text: quote the value as written, e.g. '1.10' (in a flag: \"'1.10'\"); unquoted, YAML "
    "reads 1.10 as 1.1, 0123 as 83, 12:30 as 750 and yes as true"
)


class RespelledInt(int):
    """An unquoted integer whose text is not its decimal value (0123 is 83, 0x1F, 1_000, 12:30, +5)."""


class LeadingZeroInt(RespelledInt):
    """An unquoted integer written with a leading zero, which YAML 1.1 reads as octal (0042 is 34).
    Keeps its text: a number field refuses it naming what was written (README, "text is as written")."""

    written: str

    def __new__(cls, value: int, written: str) -> LeadingZeroInt:
        self = super().__new__(cls, value)
        self.written = written
        return self

    def __getnewargs__(self) -> tuple[int, str]:  # type: ignore[override]  # copy.deepcopy (a sweep)
        return int(self), self.written

    def decimal(self) -> str:
        """What was probably meant: the digits as a decimal number (`-007` is -7)."""
        sign = "-" if self.written.startswith("-") else ""
        return sign + (self.written.lstrip("+-").replace("_", "").lstrip("0") or "0")


# YAML 1.1's octal form (PyYAML's int resolver): a 0, then octal digits or underscores.
_OCTAL = re.compile(r"[-+]?0[0-7_]+")


class RespelledFloat(float):
    """An unquoted number whose text is not how the number is written back (1.10 is 1.1, 1e3, .5)."""


def mark_respelled(value: Any, text: str) -> Any:
    """`value`, as YAML read it from `text`, marked when it would not read back as written: a text
    field may then take the number as the text it was (`--port, 8000`), never a respelled one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and _OCTAL.fullmatch(text.strip()):
        return LeadingZeroInt(value, text.strip())
    if isinstance(value, int) and str(value) != text.strip():
        return RespelledInt(value)
    if isinstance(value, float) and repr(value) != text.strip():
        return RespelledFloat(value)
    return value


def plain(value: Any) -> Any:
    """`value` with the respelled marks dropped: what is kept as data (free-form request parameters,
    a sweep's parameters) must be plain numbers (orjson and the YAML dumper take no subclass)."""
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, RespelledInt):
        return int(value)
    if isinstance(value, RespelledFloat):
        return float(value)
    return value


def _as_written(value: Any) -> str | None:
    """The text an unquoted number stood for when it reads back as written (8000, 2.5); else None."""
    if isinstance(value, bool | RespelledInt | RespelledFloat):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return None


# What YAML made of an unquoted value that is not text, by Python type (bool first: it is an int too).
YAML_SCALAR_KINDS: tuple[tuple[Any, str], ...] = (
    (bool, "boolean"),
    (int | float, "number"),
    (datetime.date, "date"),  # `2024-01-01`
    (type(None), "null"),  # only as a mapping key: a null value means "unset"
)


def _yaml_kind(value: Any) -> str | None:
    return next((name for tp, name in YAML_SCALAR_KINDS if isinstance(value, tp)), None)


def _not_text(path: str, value: Any, what: str = "") -> ConfigError:
    """A number, boolean or date where text goes; the value is shown unless it may be a secret."""
    kind = _yaml_kind(value) or type(value).__name__
    if may_hold_secret(path):
        shown = f"a {kind} {what}(not shown: it may hold a secret)"
    else:
        text = value.isoformat() if isinstance(value, datetime.date) else repr(value)
        shown = f"the {kind} {text} {what}"
    return ConfigError(f"config error at {path}: {shown.rstrip()} is not allowed; {QUOTE_HINT}")


def _convert_str(tp: Any, value: Any, path: str, meta: typing.Mapping[str, Any]) -> str:
    if (written := _as_written(value)) is not None:
        value = written  # `--port, 8000`: the text it was
    elif _yaml_kind(value):
        raise _not_text(path, value)
    if not isinstance(value, str):
        raise _fail(path, value, "expected a string")
    if meta.get("nonempty") and not value.strip():
        raise _fail(path, value, meta["nonempty"])
    return value


def _convert_secret(tp: Any, value: Any, path: str, meta: typing.Mapping[str, Any]) -> Secret:
    if isinstance(value, Secret):
        return value
    if (written := _as_written(value)) is not None:
        value = written  # an all-digit key written unquoted, as written
    elif _yaml_kind(value):  # 0123 or 1.10 unquoted: YAML changed it
        raise _not_text(path, value)
    if not isinstance(value, str):
        kind = type(value).__name__  # the value itself is never echoed: it is a secret
        raise ConfigError(f"config error at {path}: a value of type {kind} is not allowed; expected a string")
    return Secret(value)


def _convert_union(tp: Any, value: Any, path: str, meta: typing.Mapping[str, Any]) -> Any:
    """`Literal["auto"] | int`: the first arm that accepts the value (the field's range applies to
    the numeric arm); else one error naming every arm."""
    for arm in get_args(tp):
        try:
            return convert(arm, value, path, meta)
        except ConfigError:
            continue
    raise _fail(path, value, f"expected {describe(tp, meta)}{_range_text(meta)}")


# Generic hints (Literal[...], list[X], dict[K, V], X | Y) are dispatched on their origin ...
_BY_ORIGIN: dict[Any, _Converter] = {
    Literal: _convert_literal,
    Union: _convert_union,
    types.UnionType: _convert_union,
    list: _convert_list,
    dict: _convert_dict,
}
# ... and plain hints on the type itself.
_BY_TYPE: dict[Any, _Converter] = {
    Any: _convert_any,
    bool: _convert_bool,
    int: _convert_int,
    float: _convert_float,
    str: _convert_str,
    Secret: _convert_secret,
}


# The types whose converters take text only (and refuse a respelled number as such).
_TEXT_TYPES: tuple[Any, ...] = (str, Secret)


def _check_number(value: Any, path: str, expected: str) -> None:
    """What no number field accepts: a non-number, NaN, infinity, an integer beyond 64 bits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(path, value, f"expected {expected}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(path, value, f"NaN and infinity are never valid; expected {expected}")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise _fail(path, value, f"integers must fit in 64 bits (-2**63 .. 2**63-1); expected {expected}")


def _check_plain_numbers(value: Any, path: str, depth: int = 0) -> None:
    """Free-form values (additional_sampling_params) end up in a JSON body: the same number rules,
    text keys only (JSON has no others: `{50256: -100}` failed at every request), and a depth the
    JSON encoder takes (orjson stops at 255 levels)."""
    if isinstance(value, dict | list) and depth >= MAX_NESTING:
        raise ConfigError(f"config error at {path}: nested deeper than {MAX_NESTING} levels; flatten it")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise _not_text(_join(path, k), k, what="as a key ")
            _check_key(path, k, v, plain_name=False)
            _check_plain_numbers(v, _join(path, k), depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain_numbers(v, _join(path, i), depth + 1)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _check_leading_zero(value, path)
        _check_number(value, path, "a finite number")


def _range_text(meta: typing.Mapping[str, Any]) -> str:
    """` -1, or >= 0 and <= 604800 (seconds: a week)`: the sentinels, the range, what it means."""
    meta = _in_force(meta)
    parts = []
    if meta.get("gt") is not None:
        parts.append(f"> {meta['gt']}")
    if meta.get("ge") is not None:
        parts.append(f">= {meta['ge']}")
    if meta.get("le") is not None:
        parts.append(f"<= {meta['le']}")
    if not parts:
        return ""
    sentinels = "".join(f" {v}," for v in meta.get("also") or ())
    bound = f" ({meta['bound']})" if meta.get("bound") else ""
    return f"{sentinels}{' or' if sentinels else ''} {' and '.join(parts)}{bound}"


def _check_range(value: float, path: str, meta: typing.Mapping[str, Any]) -> None:
    if value in (meta.get("also") or ()):
        return
    meta = _in_force(meta)
    gt, ge, le = meta.get("gt"), meta.get("ge"), meta.get("le")
    if (
        (gt is not None and not value > gt)
        or (ge is not None and not value >= ge)
        or (le is not None and not value <= le)
    ):
        raise _fail(path, value, f"must be{_range_text(meta)}")


def _in_force(meta: typing.Mapping[str, Any]) -> typing.Mapping[str, Any]:
    """`meta` without an admission `le` outside `admitting()` (a written config read back)."""
    if meta.get("admission") and not _ADMITTING.get():
        return {**meta, "le": None}
    return meta


def _check_reach(built: Any, path: str, meta: typing.Mapping[str, Any]) -> None:
    """A bounded variant field (think times): the values the built generator reaches, as its
    `reach()` says, stay within the field's `le`."""
    meta = _in_force(meta)
    le, reach = meta.get("le"), getattr(built, "reach", None)
    if le is None or reach is None or reach() <= le:
        return
    raise ConfigError(
        f"config error at {path}: values reaching {reach():g} are not allowed; must be <= {le}"
        + (f" ({meta['bound']})" if meta.get("bound") else "")
    )


def describe(tp: Any, meta: typing.Mapping[str, Any] | None = None) -> str:
    meta = meta or {}
    _, tp = _is_optional(tp)
    if meta.get("variants"):
        return f"a mapping with type: {' | '.join(meta['variants'])}"
    if get_origin(tp) is Literal:
        return " | ".join(map(str, get_args(tp)))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(describe(arm) for arm in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def to_dict(obj: Any) -> Any:
    """Dataclass tree → plain data (for config.yml and hashing); a Secret becomes `<redacted>`."""
    if isinstance(obj, Secret):
        return REDACTED
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def json_schema(cls: type) -> dict[str, Any]:
    """JSON schema (draft 2020-12) of a config dataclass, for editor completion."""
    hints = get_type_hints(cls)
    props = {}
    required = []
    for f in dataclasses.fields(cls):
        props[f.name] = _schema_of(hints[f.name], f.metadata)
        if f.metadata.get("doc"):
            props[f.name]["description"] = f.metadata["doc"]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
        elif f.default is not dataclasses.MISSING and isinstance(f.default, str | int | float | bool):
            props[f.name]["default"] = f.default
    out: dict[str, Any] = {
        "type": "object",
        "title": cls.__name__,
        "properties": props,
        "additionalProperties": False,
    }
    if required:
        out["required"] = required
    return out


def _schema_of(tp: Any, meta: typing.Mapping[str, Any]) -> dict[str, Any]:
    optional, tp = _is_optional(tp)
    if meta.get("variants"):
        inner: dict[str, Any] = {"oneOf": [json_schema(c) for c in meta["variants"].values()]}
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        inner = json_schema(tp)
    elif get_origin(tp) is Literal:
        inner = {"enum": list(get_args(tp))}
    elif get_origin(tp) is list:
        inner = {"type": "array", "items": _schema_of(get_args(tp)[0], meta)}
    elif get_origin(tp) is dict:
        inner = {"type": "object"}
    elif get_origin(tp) in (Union, types.UnionType):
        inner = {"anyOf": [_schema_of(arm, meta) for arm in get_args(tp)]}
    else:
        inner = {
            bool: {"type": "boolean"},
            int: {"type": "integer"},
            float: {"type": "number"},
            str: {"type": "string"},
            Secret: {"type": "string"},
        }.get(tp, {})
        for key, word in (("gt", "exclusiveMinimum"), ("ge", "minimum"), ("le", "maximum")):
            if meta.get(key) is not None and tp in (int, float):
                inner[word] = meta[key]
        if meta.get("also") and tp in (int, float):
            inner = {"anyOf": [{"enum": list(meta["also"])}, inner]}
    return {"anyOf": [inner, {"type": "null"}]} if optional else inner
