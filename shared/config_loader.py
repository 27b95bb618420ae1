"""Loading a config: YAML (with `!expand` and `!include`), dotted overrides, validation.

Precedence: built-in defaults < file < flags the user typed. `!expand [a, b]` on a scalar makes a
sweep: the run set is the Cartesian product of every expanded value, in file order.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import itertools
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import yaml
from veeksha.shared.config import BenchmarkConfig, CapacitySearchConfig
from veeksha.shared.config_checks import check_benchmark_config, uses_client_api_base
from veeksha.shared.errors import ConfigError
from veeksha.shared.jsonio import is_utf8
from veeksha.shared.redact import (
    known_secrets,
    may_hold_secret,
    redact_config,
    redact_params,
    scrub_list,
)
from veeksha.shared.schema import admitting, build, key_for_message, mark_respelled, plain, to_dict
from veeksha.shared.secret import Secret


@dataclass(frozen=True)
class Expand:
    """Marker left in the raw tree by `!expand`; replaced by one value per run."""

    values: tuple[Any, ...]


# A config is a few hundred values. Counting every value as often as aliases and !include
# repeat it, anything near this is an alias or include bomb, refused before it eats memory or time.
MAX_CONFIG_VALUES = 100_000
# Likewise a sweep this long is an !expand repeated through aliases, not a plan anyone would run.
MAX_SWEEP_RUNS = 10_000
PROJECT_TAGS = ("!expand", "!include")
# A written config.yml is a few kilobytes; anything this large was not written by the runner. A config
# the user writes (and each file it includes) is no larger: the bound keeps `--config /dev/zero`, or a
# log given by mistake, from eating memory before anything can be said about it.
MAX_PLAIN_YAML_BYTES = 1 << 20
# The `!!` tags YAML and PyYAML define: an error may name one (`!!binary`, `!!python/object:...`), as it
# shows no text of the user's. Any other tag is most likely a value starting with `!`: never shown.
KNOWN_YAML_TAGS = frozenset(
    {"binary", "bool", "float", "int", "map", "merge", "null", "omap", "pairs", "seq", "set", "str"}
    | {"timestamp", "value", "yaml"}
)
# What an unquoted value starting with `!`, `*` or `&` became, and why it may not be shown.
_YAML_MARKS = {
    "!": "a YAML tag",
    "*": "a YAML alias, and no anchor (&) of that name comes before it",
    "&": "a YAML anchor",
}


# YAML 1.1 (PyYAML) takes a float only with a dot and a signed exponent (`1.0e+3`): `1e3` and `2e-5`
# stayed text, refused as "not a number". This is YAML 1.2's float with an exponent; 1.1's forms stay.
_E_NOTATION = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")
_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
    """The loader of what the user writes (config files and flag values): SafeLoader with `1e3` a number."""


class _WrittenLoader(yaml.SafeLoader):
    """The loader of files we wrote (a run directory's config.yml, read back by evaluate, capacity
    results and the uploader): plain SafeLoader (YAML 1.1) rules. Before d67c1b4, config.yml was
    dumped by yaml.safe_dump, which left text such as `20e12` unquoted: read with `_Loader`, an old
    run's header or W&B group became a float (refused, or a different upload). _Dumper quotes such
    text, so a config.yml written now reads the same with either loader."""


class _Dumper(yaml.SafeDumper):
    """config.yml's dumper: the text '1e3' is quoted, as the loader would read it back as a number."""


_E_NOTATION_FIRST = list("-+.0123456789")
for _yaml_class in (_Loader, _Dumper):
    _yaml_class.add_implicit_resolver(_FLOAT_TAG, _E_NOTATION, _E_NOTATION_FIRST)


@dataclass
class _Reading:
    """One top-level read: the files open through !include (to refuse cycles) and what is left of
    the value budget, shared by every included file (to refuse bombs spread over files)."""

    chain: list[Path]
    values_left: int = MAX_CONFIG_VALUES
    tags: tuple[str, ...] = PROJECT_TAGS  # the tags this reading resolves; () for plain data
    max_bytes: int | None = None  # refuse files larger than this (None: no bound)
    written: bool = False  # a file we wrote (config.yml): YAML 1.1 numbers, as _WrittenLoader says
    marked: bool = False  # numbers marked as a config's are (always with tags), for build()


def _loader_for(path: Path, reading: _Reading) -> type[_WrittenLoader]:
    """A SafeLoader for one file of `reading`: foreign tags refused, `!expand`/`!include` resolved.

    A fresh class per file, because PyYAML constructors are registered on the class and these
    need to know the file (for error messages and relative includes) and the reading."""

    class Loader(_WrittenLoader):
        def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
            event = self.peek_event()  # type: ignore[no-untyped-call]  # unannotated in types-PyYAML
            _refuse_foreign_tag(event, path, reading)
            _refuse_empty_anchor(event, path)
            return super().compose_node(parent, index)

    if not reading.written:  # a file the user wrote: `1e3` is a number (_Loader)
        Loader.add_implicit_resolver(_FLOAT_TAG, _E_NOTATION, _E_NOTATION_FIRST)
    # The constructors are module functions; partial binds what they need to know of this file.
    Loader.add_constructor(_INT_TAG, functools.partial(_construct_int, path))
    if reading.tags or reading.marked:
        _mark_numbers(Loader, path)
    if reading.tags:  # plain data knows no custom tag at all (_refuse_foreign_tag refuses them anyway)
        Loader.add_constructor("!expand", functools.partial(_construct_expand, path))
        Loader.add_constructor("!include", functools.partial(_construct_include, path, reading))
    return Loader


def _mark_numbers(loader: type[_WrittenLoader], where: Path | str) -> None:
    """A config's numbers keep whether they read back as written: a text field takes `8000`, not
    `0123`, and a number field refuses `0042` (octal in YAML 1.1: 34)."""
    loader.add_constructor(_INT_TAG, functools.partial(_construct_marked, _construct_int, where))
    loader.add_constructor(_FLOAT_TAG, functools.partial(_construct_marked, _construct_float, where))


def _refuse_foreign_tag(event: Any, path: Path, reading: _Reading) -> None:
    """Only the project's tags: `!!python/...`, `!!binary`, `!!set` or `!custom` are refused
    before anything is built from them."""
    tag: str | None = getattr(event, "tag", None)
    if tag is None or tag in ("!", *reading.tags):
        return
    allowed = "this file is plain data (no tags)"
    if reading.tags:
        allowed = f"the only tags are {' and '.join(reading.tags)}"
    shown = _tag_for_message(tag)
    if shown is None:
        raise _marked_value_error(path, event.start_mark, "!", allowed)
    raise ConfigError(f"{path} line {event.start_mark.line + 1}: YAML tag {shown} is not allowed; {allowed}")


def _tag_for_message(tag: str) -> str | None:
    """How an error may name `tag`: as written when it is the project's or YAML's own; else None."""
    if tag in PROJECT_TAGS:
        return tag
    name = tag.removeprefix("tag:yaml.org,2002:")
    if name != tag and (name in KNOWN_YAML_TAGS or name.startswith("python/")):
        return f"!!{name}"
    return None


def _refuse_empty_anchor(event: Any, path: Path | str) -> None:
    """`api_key: &sk-...` is an anchor on nothing: the key was silently null (and the env fallback
    used). An anchor on an empty plain value has no other use, so it is refused."""
    if isinstance(event, yaml.ScalarEvent) and event.anchor and event.style is None and not event.value:
        raise _marked_value_error(path, event.start_mark, "&", "an anchor needs a value after it")


def _marked_value_error(path: Path | str, mark: Any, sign: str, allowed: str) -> ConfigError:
    """An unquoted value starting with `sign` that YAML read as a tag, alias or anchor: where it is
    and how to quote it, never its text (an unquoted key or token can start with any character)."""
    return ConfigError(
        f"{path} line {mark.line + 1} column {mark.column + 1}: a value starting with '{sign}' is "
        f"{_YAML_MARKS[sign]} (not shown: it may be a secret); if it is text, quote it, e.g. "
        f"key: '{sign}...'; {allowed}"
    )


def _construct_expand(path: Path, loader: yaml.SafeLoader, node: yaml.Node) -> Expand:
    where = f"{path} line {node.start_mark.line + 1}"
    if not isinstance(node, yaml.SequenceNode):
        raise ConfigError(f"{where}: !expand needs a list, e.g. !expand [1, 2, 4]")
    values = tuple(loader.construct_sequence(node, deep=True))
    if not values:
        raise ConfigError(f"{where}: !expand needs at least one value")
    if any(_expansions(v) for v in values):
        raise ConfigError(f"{where}: an !expand inside an !expand is not supported; list every value in one")
    return Expand(values)


def _construct_include(path: Path, reading: _Reading, loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """`!include name`: the file next to `path`, read within the same reading (cycles, budget)."""
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"{path} line {line}: !include needs a file name, e.g. !include traffic.yml")
    name = str(loader.construct_scalar(node))
    target = (path.parent / name).resolve()
    if target in reading.chain:
        cycle = " -> ".join(str(p) for p in [*reading.chain, target])
        raise ConfigError(f"{path} line {line}: !include {name} makes a cycle: {cycle}")
    if not target.is_file():
        raise ConfigError(f"{path} line {line}: !include {name}: {target} is not a file")
    value = _read(target, reading)
    if value is None:  # splicing nothing would silently unset the key the !include stands for
        raise ConfigError(
            f"{path} line {line}: !include {name}: {target} is empty; give it a value, "
            "or remove the key and its !include"
        )
    return value


def _construct_int(path: Path | str, loader: yaml.SafeLoader, node: yaml.Node) -> int:
    assert isinstance(node, yaml.ScalarNode)  # the constructor of the int tag, a scalar tag
    try:
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    except ValueError:  # Python refuses to parse integers of thousands of digits
        raise ConfigError(
            f"{path} line {node.start_mark.line + 1}: an integer of {len(node.value)} characters "
            "is not allowed; integers must fit in 64 bits"
        ) from None


def _construct_float(path: Path | str, loader: yaml.SafeLoader, node: yaml.Node) -> float:
    return yaml.SafeLoader.construct_yaml_float(loader, node)  # type: ignore[arg-type]  # a ScalarNode


def _construct_marked(
    construct: Callable[[Path | str, yaml.SafeLoader, yaml.Node], Any],
    path: Path | str,
    loader: yaml.SafeLoader,
    node: yaml.Node,
) -> Any:
    assert isinstance(node, yaml.ScalarNode)
    return mark_respelled(construct(path, loader, node), node.value)


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse one config file (and what it includes) into plain data with Expand markers.

    Errors name the file: unreadable, not a regular file or over MAX_PLAIN_YAML_BYTES, invalid YAML,
    duplicate keys, tags other than !expand and !include, !include cycles, alias or include bombs."""
    return _top_level(path, _unshared(_read(path, _Reading(chain=[], max_bytes=MAX_PLAIN_YAML_BYTES))))


def read_plain_yaml(path: Path, max_bytes: int = MAX_PLAIN_YAML_BYTES) -> dict[str, Any]:
    """A YAML file that is data, not a config to resolve (a run directory's config.yml, which
    dump_config_yaml wrote): YAML 1.1 numbers (_WrittenLoader: `20e12` is text), no tags at all, so
    no !include reaches outside the file; at most `max_bytes`; the same bounds on duplicate keys,
    nesting and alias expansion as a config."""
    reading = _Reading(chain=[], tags=(), max_bytes=max_bytes, written=True)
    return _top_level(path, _unshared(_read(path, reading)))


def read_written_yaml(path: Path) -> dict[str, Any]:
    """A config.yml we wrote, as build() takes it: read_plain_yaml's rules (no tags, YAML 1.1
    numbers), with numbers marked as a config file's are (a text field takes `8000`, not `0123`)."""
    reading = _Reading(chain=[], tags=(), max_bytes=MAX_PLAIN_YAML_BYTES, written=True, marked=True)
    return _top_level(path, _unshared(_read(path, reading)))


def _unshared(data: Any) -> Any:
    """`data` with each use of an alias made its own copy. YAML gives every `*name` the anchored
    object itself: a flag set at one use changed the other uses, and a sweep written at one use ran
    the same value at every use. (Bounded: _read refused a config of more than MAX_CONFIG_VALUES
    values, counting each alias every time it repeats, which refuses an alias inside itself too.)"""
    if isinstance(data, dict):
        return {key: _unshared(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_unshared(item) for item in data]
    if isinstance(data, Expand):
        return Expand(tuple(_unshared(value) for value in data.values))
    return data  # a scalar: never changed in place


def _top_level(path: Path, data: Any) -> dict[str, Any]:
    """Only a whole config must be a mapping of sections (an included file is any value); an empty
    one is all defaults."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    return data


def _read_text(path: Path, max_bytes: int | None) -> str:
    if max_bytes is None:
        return path.read_text()
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)  # never more than the bound, even if the file grows meanwhile
    if len(data) > max_bytes:
        size = max(len(data), os.stat(path).st_size)
        raise ConfigError(
            f"config file {path} is {size} bytes; at most {max_bytes} are allowed (a config is a few "
            "kilobytes: is this the right file?)"
        )
    return data.decode()


def _check_regular_file(path: Path) -> None:
    """A device, a pipe or a directory is refused before it is opened: /dev/zero never ends, and a
    pipe with no writer waits forever."""
    try:
        is_file = path.is_file()
    except OSError:  # e.g. a name too long: reading it says why
        return
    if not is_file and path.exists():
        raise ConfigError(
            f"config file {path} is not a regular file (a directory, device or pipe); "
            "give the path of a YAML file"
        )


def _read(path: Path, reading: _Reading) -> Any:
    """The value of one YAML file (None when it holds none), read within `reading`."""
    _check_regular_file(path)
    try:
        text = _read_text(path, reading.max_bytes)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the --config path") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "it is not UTF-8 text"
        raise ConfigError(f"config file {path} cannot be read: {reason}") from None
    reading.chain.append(path.resolve())
    try:
        data = _parse(text, path, reading)
    finally:
        reading.chain.pop()
    reading.values_left -= _count_values(data, reading.values_left)
    if reading.values_left < 0:
        where = " -> ".join(str(p) for p in [*reading.chain, path])  # the include chain, if any
        raise ConfigError(
            f"{where}: the config expands to more than {MAX_CONFIG_VALUES} values (YAML aliases or "
            "!include repeated, or an alias inside itself); write the values out instead"
        )
    return data


def _parse(text: str, path: Path, reading: _Reading) -> Any:
    loader = _loader_for(path, reading)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise _yaml_error(e, path) from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: lists or mappings are nested too deeply") from None
    except TypeError as e:  # a key that cannot be one, e.g. `? !expand [[1], [2]]`: a list
        raise ConfigError(f"{path}: invalid YAML: {e} (a mapping key must be a plain value)") from None
    finally:
        loader.dispose()


def _yaml_error(e: yaml.YAMLError, path: Path) -> ConfigError:
    """PyYAML's error as one line. An alias or anchor error would quote the name, which is the text
    after `*` or `&`: a value written unquoted (`api_key: *sk-...`), so it is never shown."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None) or ""
    mark = getattr(e, "problem_mark", None)
    if problem.startswith("found undefined alias"):
        return _marked_value_error(path, mark, "*", "an alias repeats an anchored value (&name) above it")
    if context.startswith("found duplicate anchor"):
        return _marked_value_error(path, mark, "&", "an earlier anchor has the same name; give each its own")
    where = f" line {mark.line + 1}" if mark else ""
    return ConfigError(f"{path}{where}: invalid YAML: {problem}")


def _check_duplicate_keys(
    node: yaml.Node, path: Path, key_path: str = "", seen: set[int] | None = None
) -> None:
    """YAML keeps the last of two equal keys silently; config.md makes it an error.
    Each node is checked once, however many aliases point at it."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(item, path, f"{key_path}.{i}" if key_path else str(i), seen)
    elif isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            shown = key_for_message(key) if key is not None else str(key)  # `{A:sk-x, A:sk-x}`
            dotted = f"{key_path}.{shown}" if key_path else shown
            line = key_node.start_mark.line + 1
            if key is not None and key in first_line:
                raise ConfigError(
                    f"config error at {dotted}: duplicate key in {path} line {line} (first on line "
                    f"{first_line[key]}); give each key once"
                )
            if key is not None:
                first_line[key] = line
            _check_duplicate_keys(value_node, path, dotted, seen)


def _count_values(data: Any, limit: int) -> int:
    """How many values `data` holds, counting a shared (aliased) part each time it appears.
    Stops counting past `limit`, so a bomb or an alias inside itself costs no more than that."""
    count, stack = 0, [data]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack += item.values()
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, Expand):
            stack += item.values
    return count


def empty_override(flag: str) -> str:
    """What a `--section.key` given an empty value is told. It is refused, not taken as null: an
    unset shell variable (`--x "$UNSET"`) would otherwise clear what the file sets without a word;
    `null` is how a key is unset on purpose (README)."""
    return f"{flag} is empty; give a value, `null` to unset the key, or leave the flag out"


# How a flag unsets a key on purpose: YAML's null, written out.
NULL_SPELLINGS = frozenset({"null", "Null", "NULL", "~"})


def parse_override_value(text: str, flag: str = "") -> Any:
    """`--a.b 5` → 5, `true` → True, `[1, 2]` → list, anything else stays a string.

    A command line has no YAML comments: a single value YAML would cut at ` #` (`PR #12`, an API key
    `#tok`) is the text as typed. A value YAML reads as null (`&tok`, only spaces) is refused unless
    written as null (NULL_SPELLINGS): it silently unset the key, and client.api_key fell back to
    OPENAI_API_KEY. `flag` is the dotted key, for the error."""
    reader = _FlagReader(text, flag)
    try:
        value = reader.get_single_data()
    except yaml.YAMLError:
        return text
    finally:
        reader.dispose()
    if reader.dropped_comment and not isinstance(value, dict | list):
        return text  # a section given whole (`"$(cat server.yml)"`) is YAML, comments and all
    if value is None and text.strip() not in NULL_SPELLINGS:
        raise _null_flag_error(flag, text)
    return value


class _FlagReader(_Loader):
    """Reads one flag's value: numbers marked as a file's are, an anchor on nothing inside a mapping
    refused, and whether YAML dropped a comment noted (`dropped_comment`)."""

    def __init__(self, text: str, flag: str) -> None:
        super().__init__(text)
        self.where, self.dropped_comment = _flag_name(flag), False

    def scan_to_next_token(self) -> None:
        start = self.pointer
        super().scan_to_next_token()
        # This skips only spaces, line breaks and comments: a `#` among them began a comment.
        self.dropped_comment |= "#" in self.buffer[start : self.pointer]

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if parent is not None:  # the whole value on nothing is null, refused with a flag's hint
            event = self.peek_event()  # type: ignore[no-untyped-call]  # unannotated in types-PyYAML
            _refuse_empty_anchor(event, self.where)
        return super().compose_node(parent, index)


def _construct_flag_number(
    construct: Callable[[Path | str, yaml.SafeLoader, yaml.Node], Any],
    loader: yaml.SafeLoader,
    node: yaml.Node,
) -> Any:
    where = loader.where if isinstance(loader, _FlagReader) else "a flag"
    return _construct_marked(construct, where, loader, node)


_FlagReader.add_constructor(_INT_TAG, functools.partial(_construct_flag_number, _construct_int))
_FlagReader.add_constructor(_FLOAT_TAG, functools.partial(_construct_flag_number, _construct_float))


def _flag_name(flag: str) -> str:
    return f"--{flag}" if flag else "--KEY"  # (simulate-server's flags are not named)


def _null_flag_error(flag: str, text: str) -> ConfigError:
    where = _flag_name(flag)
    secret = may_hold_secret(flag)
    shown = "its value (not shown: it may hold a secret)" if secret else repr(text)
    example = "..." if secret else text.strip() or " "
    return ConfigError(
        f"{where}: {shown} reads as null in YAML (as an anchor `&name` with nothing after it, or only "
        f"spaces, do); write null to unset the key, or quote the text: {where} \"'{example}'\""
    )


def apply_override(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.0.c` in a raw tree, creating mappings on the way (lists are indexed by number)."""
    keys = dotted.split(".")
    node: Any = tree
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                where = ".".join(keys[:i])
                raise ConfigError(f"--{dotted}: {where} is a list; use an index < {len(node)}")
            if last:
                _refuse_replacing_a_sweep(dotted, node[int(key)])
                node[int(key)] = value
                return
            node = node[int(key)]
            continue
        if isinstance(node, Expand):  # replacing it with a section would drop the sweep unseen
            where = ".".join(keys[:i])
            raise ConfigError(
                f"--{dotted}: {where} is swept with !expand in the config file; set this key in each "
                "of its values there (a flag cannot change a sweep)"
            )
        if not isinstance(node, dict):
            where = ".".join(keys[:i])
            raise ConfigError(f"--{dotted}: {where} is a value, not a section")
        if last:
            _refuse_replacing_a_sweep(dotted, node.get(key))
            node[key] = value
            return
        if not isinstance(node.get(key), dict | list | Expand):
            if keys[i + 1].isdigit():  # cannot index into a list the file does not have
                where = ".".join(keys[: i + 1])
                raise ConfigError(
                    f"--{dotted}: {where} is not in the config file; give the whole list, "
                    f"e.g. --{where} '[{{type: ...}}]'"
                )
            node[key] = {}
        node = node[key]


def _refuse_replacing_a_sweep(dotted: str, old: Any) -> None:
    """A flag sets one value: over a value swept with !expand, or a section holding one, it turned
    the sweep into a single run without a word."""
    found = _expansions(old, tuple(dotted.split(".")))
    if not found:
        return
    swept = ".".join(key_for_message(k) for k in found[0][0])
    other_keys = (
        "" if swept == dotted else f", or set the section's other keys one by one (--{dotted}.KEY VALUE)"
    )
    raise ConfigError(
        f"--{dotted}: {swept} is swept with !expand in the config file, and the flag would replace the "
        f"sweep with one value; change the values in the file{other_keys}"
    )


def _expansions(tree: Any, path: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], Expand]]:
    """Every !expand in the tree with its key path (a tuple: a key may hold a dot, `extra.mode`)."""
    if isinstance(tree, Expand):
        return [(path, tree)]
    if isinstance(tree, dict):
        return [e for k, v in tree.items() for e in _expansions(v, (*path, k))]
    if isinstance(tree, list):
        return [e for i, v in enumerate(tree) for e in _expansions(v, (*path, i))]
    return []


def _replace_at(tree: Any, path: tuple[str | int, ...], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def expand(tree: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """All runs a raw tree stands for: [(params {dotted key: value}, concrete tree)]."""
    found = _expansions(tree)
    if not found:
        return [({}, tree)]
    count = math.prod(len(e.values) for _, e in found)
    if count > MAX_SWEEP_RUNS:
        raise ConfigError(
            f"config error at {_dotted(found[0][0])}: the !expand values make a sweep of {count} runs; "
            f"at most {MAX_SWEEP_RUNS} are allowed (split the sweep into several files)"
        )
    runs = []
    for combo in itertools.product(*(e.values for _, e in found)):
        concrete = copy.deepcopy(tree)
        params = {}
        for (path, _), value in zip(found, combo, strict=True):
            _replace_at(concrete, path, value)
            params[_dotted(path)] = value
        runs.append((params, concrete))
    return runs


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(k) for k in path)


def is_config_key(cls: type, dotted: str) -> bool:
    """Whether `--dotted` can name a key of a `cls` config: a field of any variant of a section, an
    index of a list, any name in a free-form mapping (headers, env, request parameters). Lets the
    command line tell a mistyped option from a config key given without its value."""
    kinds: list[Any] = [cls]
    for part in dotted.split("."):
        kinds = [child for kind in kinds for child in _key_types(kind, part)]
        if not kinds:
            return False
    return True


def _key_types(tp: Any, part: str) -> list[Any]:
    """The types of what key `part` names inside a value of type `tp` ([] when it names nothing)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # a section's variants, or an optional value
        return [child for arg in typing.get_args(tp) for child in _key_types(arg, part)]
    if dataclasses.is_dataclass(tp):
        field = next((f for f in dataclasses.fields(tp) if f.name == part), None)
        return [typing.get_type_hints(tp)[part]] if field is not None else []
    if origin is list:
        return list(typing.get_args(tp)) if part.isdigit() else []
    if origin is dict:
        return [typing.get_args(tp)[1]]
    return [Any] if tp is Any else []  # below Any, any key; a scalar has none


@dataclass(frozen=True)
class EnvFallbacks:
    """The documented environment fallbacks for unset client keys (`OPENAI_API_BASE`,
    `OPENAI_API_KEY`). Only the command line reads the environment (runner/cli.py); loading takes the
    values as an argument, so the same file always loads to the same config."""

    api_base: str | None = None
    api_key: Secret | None = None


NO_FALLBACKS = EnvFallbacks()


@dataclass
class LoadedRun:
    """One concrete run of a config file: its sweep parameters and validated config."""

    params: dict[str, Any]
    config: BenchmarkConfig
    # The secret values every run of its sweep knows (a swept api_key): each run hides them all, so
    # one run's key typed where no rule looks is not shown by the run that holds another key.
    sweep_secrets: tuple[str, ...] = ()


def load_raw(path: Path | None, overrides: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    return _with_flags(read_yaml(path) if path is not None else {}, overrides)


def _with_flags(tree: dict[str, Any], overrides: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The file's tree with the flags applied: the raw config a run is expanded and built from."""
    for dotted, text in overrides:
        apply_override(tree, dotted, parse_override_value(text, dotted))
    _refuse_surrogates(tree)
    return tree


def _refuse_surrogates(tree: Any, path: tuple[str | int, ...] = ()) -> None:
    """A double-quoted YAML escape `\\udce9` (in the file or a flag) is a lone surrogate: text in
    Python, but no UTF-8 file can hold it, and the run failed writing its config (the hash of it in
    run.json) after its server had started. Refused here, naming the key; the value is not shown."""
    if isinstance(tree, str):
        _refuse_surrogate_in(tree, path, "value")
    elif isinstance(tree, dict):
        for key, value in tree.items():
            if isinstance(key, str):
                _refuse_surrogate_in(key, (*path, key), "key")
            _refuse_surrogates(value, (*path, key))
    elif isinstance(tree, list):
        for i, item in enumerate(tree):
            _refuse_surrogates(item, (*path, i))
    elif isinstance(tree, Expand):
        for value in tree.values:
            _refuse_surrogates(value, path)


def _refuse_surrogate_in(text: str, path: tuple[str | int, ...], what: str) -> None:
    if is_utf8(text):
        return
    surrogate = next(c for c in text if not is_utf8(c))
    where = ".".join(key_for_message(k) for k in path) or "<root>"
    raise ConfigError(
        f"config error at {where}: the {what} holds {surrogate!a}, a lone surrogate (a YAML "
        "\\u escape that is no character) that no UTF-8 file can hold; write the character itself "
        "or remove it"
    )


def load_benchmark_runs(
    path: Path | None, overrides: Sequence[tuple[str, str]] = (), fallbacks: EnvFallbacks = NO_FALLBACKS
) -> list[LoadedRun]:
    """Every run the file expands to, each validated (all errors raised before any traffic)."""
    raw = load_raw(path, overrides)
    expanded = list(expand(raw))
    shared = tuple(scrub_list([s for _, tree in expanded for s in known_secrets(tree)]))
    # The parameters label runs (console, run.json, sweep files): never with a secret value in them.
    return [
        LoadedRun(redact_params(plain(params), tree, shared), build_benchmark_config(tree, fallbacks), shared)
        for params, tree in expanded
    ]


def build_benchmark_config(tree: dict[str, Any], fallbacks: EnvFallbacks = NO_FALLBACKS) -> BenchmarkConfig:
    """A new run's config: with the admission limits (schema.admitting), which load_written_config
    does not apply to a run already made."""
    with admitting():
        cfg = _finish(build(BenchmarkConfig, tree), fallbacks)
    _check_output_dir_named(cfg.output_dir)
    return cfg


def load_capacity_search(
    path: Path, overrides: Sequence[tuple[str, str]] = (), fallbacks: EnvFallbacks = NO_FALLBACKS
) -> CapacitySearchConfig:
    tree = read_yaml(path)
    if _expansions(tree):  # said before a flag on the swept key is refused for replacing a sweep
        raise ConfigError(f"{path}: !expand is not supported inside a capacity search config")
    with admitting():  # a new search: the admission limits apply (build_benchmark_config)
        cfg = build(CapacitySearchConfig, _with_flags(tree, overrides))
    _check_output_dir_named(cfg.output_dir)
    return replace(cfg, benchmark_config=_finish(cfg.benchmark_config, fallbacks, "benchmark_config."))


def _check_output_dir_named(value: str, key: str = "output_dir") -> None:
    """`output_dir: ""` is Path(""), the current directory: run directories would land there
    unasked. (A check of this one key, which shared/config.py declares a plain str.)"""
    if not value.strip():
        raise ConfigError(
            f"config error at {key}: empty; give a directory (e.g. {key}: benchmark_output), "
            "or '.' for the current one"
        )


def _finish(cfg: BenchmarkConfig, fallbacks: EnvFallbacks, prefix: str = "") -> BenchmarkConfig:
    """After every key is valid: the env fallbacks, then the checks on the run as a whole."""
    client = cfg.client
    source = ""
    # OPENAI_API_BASE is where a run goes without a server section. A run that launches its own
    # server talks to that server: an exported variable left from other work must not send the run
    # (and its /metrics scrapes) elsewhere without a word while the launched server sits idle.
    if client.api_base is None and fallbacks.api_base and cfg.server is None:
        client = replace(client, api_base=fallbacks.api_base)
        source = " (from OPENAI_API_BASE)"
    if client.api_key is None and fallbacks.api_key:
        client = replace(client, api_key=fallbacks.api_key)  # in memory only (never written)
    cfg = replace(cfg, client=client) if client is not cfg.client else cfg
    check_benchmark_config(cfg, prefix, api_base_source=source)
    return cfg


def redacted_dict(cfg: BenchmarkConfig | CapacitySearchConfig, known: Iterable[str] = ()) -> dict[str, Any]:
    """The config as plain data with every secret replaced: what config.yml holds. A secret value is
    hidden wherever else it appears too: a client key also given to the server under a flag no rule
    knows is still the run's key (redact_config); so are the `known` ones (its sweep's)."""
    plain: dict[str, Any] = redact_config(to_dict(cfg), [*revealed_secrets(cfg), *known])
    return plain


def config_secrets(cfg: BenchmarkConfig | CapacitySearchConfig, known: Iterable[str] = ()) -> list[str]:
    """Every secret value of a config (its api_key, header and URL credentials, long server.env
    values, ...) and the `known` ones: what redacted_dict hides, for other text about the run
    (run.json's argv)."""
    return known_secrets(to_dict(cfg), [*revealed_secrets(cfg), *known])


def revealed_secrets(obj: Any) -> list[str]:
    """The values of the Secrets in a config (client.api_key), which to_dict writes as REDACTED."""
    if isinstance(obj, Secret):
        return [obj.reveal()] if obj.reveal() else []
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [s for f in dataclasses.fields(obj) for s in revealed_secrets(getattr(obj, f.name))]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in revealed_secrets(v)]
    if isinstance(obj, list | tuple):
        return [s for v in obj for s in revealed_secrets(v)]
    return []


def dump_config_yaml(cfg: BenchmarkConfig | CapacitySearchConfig, known: Iterable[str] = ()) -> str:
    return yaml.dump(redacted_dict(cfg, known), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def config_sha256(cfg: BenchmarkConfig | CapacitySearchConfig) -> str:
    """Hash of the redacted resolved config: names run directories, detects changed configs.
    An endpoint the run's own server names (a simulated server's free port, picked at each start)
    is left out: the same config hashed differently at every run."""
    plain = redacted_dict(cfg)
    if isinstance(cfg, BenchmarkConfig) and not uses_client_api_base(cfg):
        plain["client"]["api_base"] = None
    return hashlib.sha256(orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)).hexdigest()


def load_written_config(path: Path) -> BenchmarkConfig:
    """Read a run directory's config.yml back into a BenchmarkConfig (evaluate, uploader).

    Read as we wrote it (read_written_yaml: `20e12` unquoted by an older version is text) and built
    without the admission limits (schema.admitting): they refuse new runs, not runs already made."""
    return build(BenchmarkConfig, read_written_yaml(path))
