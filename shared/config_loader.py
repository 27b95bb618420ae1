"""Loading a config: YAML (with `!expand` and `!include`), dotted overrides, validation.

Precedence: built-in defaults < file < flags the user typed. `!expand [a, b]` on a scalar makes a
sweep: the run set is the Cartesian product of every expanded value, in file order.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from veeksha.shared.config import BenchmarkConfig, CapacitySearchConfig
from veeksha.shared.errors import ConfigError
from veeksha.shared.redact import redact
from veeksha.shared.schema import build, to_dict


@dataclass(frozen=True)
class Expand:
    """Marker left in the raw tree by `!expand`; replaced by one value per run."""

    values: tuple[Any, ...]


def _loader_for(path: Path) -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        pass

    def expand(loader: yaml.SafeLoader, node: yaml.Node) -> Expand:
        if not isinstance(node, yaml.SequenceNode):
            raise ConfigError(f"{path}: !expand needs a list, e.g. !expand [1, 2, 4]")
        values = tuple(loader.construct_sequence(node, deep=True))
        if not values:
            raise ConfigError(f"{path}: !expand needs at least one value")
        return Expand(values)

    def include(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        target = (path.parent / str(loader.construct_scalar(node))).resolve()
        return read_yaml(target)

    Loader.add_constructor("!expand", expand)
    Loader.add_constructor("!include", include)
    return Loader


def read_yaml(path: Path) -> Any:
    """Parse one YAML file into plain data (with Expand markers); errors name the file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the --config path") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
    try:
        data = yaml.load(text, Loader=_loader_for(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    return data


def parse_override_value(text: str) -> Any:
    """`--a.b 5` → 5, `true` → True, `[1, 2]` → list, anything else stays a string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


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
                node[int(key)] = value
                return
            node = node[int(key)]
            continue
        if not isinstance(node, dict):
            where = ".".join(keys[:i])
            raise ConfigError(f"--{dotted}: {where} is a value, not a section")
        if last:
            node[key] = value
            return
        if not isinstance(node.get(key), dict | list):
            if keys[i + 1].isdigit():  # cannot index into a list the file does not have
                where = ".".join(keys[: i + 1])
                raise ConfigError(
                    f"--{dotted}: {where} is not in the config file; give the whole list, "
                    f"e.g. --{where} '[{{type: ...}}]'"
                )
            node[key] = {}
        node = node[key]


def _expansions(tree: Any, prefix: str = "") -> list[tuple[str, Expand]]:
    if isinstance(tree, Expand):
        return [(prefix, tree)]
    if isinstance(tree, dict):
        return [e for k, v in tree.items() for e in _expansions(v, f"{prefix}.{k}" if prefix else k)]
    if isinstance(tree, list):
        return [e for i, v in enumerate(tree) for e in _expansions(v, f"{prefix}.{i}")]
    return []


def expand(tree: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """All runs a raw tree stands for: [(params {dotted key: value}, concrete tree)]."""
    found = _expansions(tree)
    if not found:
        return [({}, tree)]
    runs = []
    for combo in itertools.product(*(e.values for _, e in found)):
        concrete = copy.deepcopy(tree)
        params = {}
        for (dotted, _), value in zip(found, combo, strict=True):
            apply_override(concrete, dotted, value)
            params[dotted] = value
        runs.append((params, concrete))
    return runs


@dataclass
class LoadedRun:
    """One concrete run of a config file: its sweep parameters and validated config."""

    params: dict[str, Any]
    config: BenchmarkConfig


def load_raw(path: Path | None, overrides: list[tuple[str, str]] = ()) -> dict[str, Any]:
    tree = read_yaml(path) if path is not None else {}
    for dotted, text in overrides:
        apply_override(tree, dotted, parse_override_value(text))
    return tree


def load_benchmark_runs(path: Path | None, overrides: list[tuple[str, str]] = ()) -> list[LoadedRun]:
    """Every run the file expands to, each validated (all errors raised before any traffic)."""
    raw = load_raw(path, overrides)
    return [LoadedRun(params, build_benchmark_config(tree)) for params, tree in expand(raw)]


def build_benchmark_config(tree: dict[str, Any]) -> BenchmarkConfig:
    cfg = build(BenchmarkConfig, tree)
    apply_env_defaults(cfg)
    return cfg


def load_capacity_search(path: Path, overrides: list[tuple[str, str]] = ()) -> CapacitySearchConfig:
    raw = load_raw(path, overrides)
    if _expansions(raw):
        raise ConfigError(f"{path}: !expand is not supported inside a capacity search config")
    cfg = build(CapacitySearchConfig, raw)
    apply_env_defaults(cfg.benchmark_config)
    return cfg


def apply_env_defaults(cfg: BenchmarkConfig) -> None:
    """Documented environment fallbacks; the key itself stays in memory only (never written)."""
    if cfg.client.api_base is None and os.environ.get("OPENAI_API_BASE"):
        cfg.client.api_base = os.environ["OPENAI_API_BASE"]
    if cfg.client.api_key is None and os.environ.get("OPENAI_API_KEY"):
        cfg.client.api_key = os.environ["OPENAI_API_KEY"]


def redacted_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data with every secret replaced: what config.yml holds."""
    return redact(to_dict(cfg))


def dump_config_yaml(cfg: Any) -> str:
    return yaml.safe_dump(redacted_dict(cfg), sort_keys=False, default_flow_style=False)


def config_sha256(cfg: Any) -> str:
    """Hash of the redacted resolved config: names run directories, detects changed configs."""
    return hashlib.sha256(orjson.dumps(redacted_dict(cfg), option=orjson.OPT_SORT_KEYS)).hexdigest()


def load_written_config(path: Path) -> BenchmarkConfig:
    """Read a run directory's config.yml back into a BenchmarkConfig (evaluate, uploader)."""
    return build(BenchmarkConfig, read_yaml(path))
