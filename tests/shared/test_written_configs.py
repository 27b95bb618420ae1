"""A run directory's config.yml, written by an older version, reads back as it was meant.

config.yml files written before the YAML 1.2 float resolver and the size bounds (commit d67c1b4) were
dumped with plain `yaml.safe_dump` (70365f8's dump_config_yaml): text such as `20e12` unquoted, sizes
beyond today's admission limits, `~user` output dirs. Reading one back (evaluate, capacity results,
the uploader) must neither refuse it nor change what it says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from veeksha.shared.config import BenchmarkConfig, BranchingGraph, TextChannel, UniformGen
from veeksha.shared.config_loader import (
    build_benchmark_config,
    dump_config_yaml,
    load_written_config,
    read_plain_yaml,
    redacted_dict,
)
from veeksha.shared.errors import ConfigError
from veeksha.shared.schema import build

CLIENT = {"model": "m", "api_base": "http://h/v1"}


def old_dump(tree: dict[str, Any]) -> str:
    """What 70365f8's dump_config_yaml wrote for this plain tree."""
    return yaml.safe_dump(tree, sort_keys=False, default_flow_style=False)


def written(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return path


def test_an_old_config_yml_with_e_notation_text_reads_back_as_text(tmp_path: Path) -> None:
    cfg = build(BenchmarkConfig, {"client": {**CLIENT, "headers": {"X-Build": "20e12"}}})
    text = old_dump(redacted_dict(cfg))
    assert "X-Build: 20e12\n" in text  # unquoted: YAML 1.1 text
    assert load_written_config(written(tmp_path, text)) == cfg


def test_the_uploaders_plain_reading_keeps_e_notation_text(tmp_path: Path) -> None:
    text = old_dump({"wandb": {"group": "1234e56", "tags": ["5e3"]}})
    assert read_plain_yaml(written(tmp_path, text)) == {"wandb": {"group": "1234e56", "tags": ["5e3"]}}


def test_a_config_yml_written_now_round_trips_text_and_floats(tmp_path: Path) -> None:
    cfg = build(
        BenchmarkConfig,
        {"client": {**CLIENT, "headers": {"X-Build": "1e3"}}, "wandb": {"group": "1e3", "tags": ["5e3"]}},
    )
    cfg = build(BenchmarkConfig, {**redacted_dict(cfg), "server": {"type": "simulated"}})
    tree = redacted_dict(cfg)
    tree["session_generator"]["channels"][0]["body_length_generator"] = {"type": "fixed", "value": 1000.0}
    cfg = build(BenchmarkConfig, tree)
    path = written(tmp_path, dump_config_yaml(cfg))
    assert load_written_config(path) == cfg
    assert read_plain_yaml(path) == redacted_dict(cfg)
    assert cfg.session_generator.channels[0].body_length_generator.reach() == 1000.0  # type: ignore[union-attr]


OLD_SIZES: list[tuple[str, dict[str, Any]]] = [
    (
        "branching-150x100",
        {
            "session_generator": {
                "session_graph": {
                    "type": "branching",
                    "num_layers_generator": {"type": "uniform", "min": 1, "max": 150},
                    "layer_width_generator": {"type": "uniform", "min": 1, "max": 100},
                }
            }
        },
    ),
    ("prefix-pool-20000", {"session_generator": {"shared_prefix_pool_size": 20000}}),
    (
        "channel-prefix-pool-20000",
        {"session_generator": {"channels": [{"type": "text", "shared_prefix_pool_size": 20000}]}},
    ),
    (
        "concurrency-2e6",
        {"traffic_scheduler": {"type": "concurrent", "target_concurrent_sessions": 2_000_000}},
    ),
    ("output-dir-unknown-user", {"output_dir": "~nouser-x9/runs"}),
]


@pytest.mark.parametrize(("name", "tree"), OLD_SIZES, ids=[n for n, _ in OLD_SIZES])
def test_an_old_config_yml_beyond_todays_admission_limits_reads_back(
    tmp_path: Path, name: str, tree: dict[str, Any]
) -> None:
    cfg = load_written_config(written(tmp_path, old_dump({"client": CLIENT, **tree})))
    assert redacted_dict(cfg) == {**redacted_dict(cfg), **_expected(name)}


def _expected(name: str) -> dict[str, Any]:
    return {"output_dir": "~nouser-x9/runs"} if name == "output-dir-unknown-user" else {}


@pytest.mark.parametrize(("name", "tree"), OLD_SIZES, ids=[n for n, _ in OLD_SIZES])
def test_a_new_run_beyond_the_admission_limits_is_still_refused(name: str, tree: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        build_benchmark_config({"client": CLIENT, **tree})


def test_an_old_branching_config_yml_keeps_its_generators(tmp_path: Path) -> None:
    cfg = load_written_config(written(tmp_path, old_dump({"client": CLIENT, **OLD_SIZES[0][1]})))
    graph = cfg.session_generator.session_graph  # type: ignore[union-attr]
    assert isinstance(graph, BranchingGraph)
    assert graph.num_layers_generator == UniformGen(min=1.0, max=150.0)


def test_an_old_channel_pool_reads_back_as_written(tmp_path: Path) -> None:
    cfg = load_written_config(written(tmp_path, old_dump({"client": CLIENT, **OLD_SIZES[2][1]})))
    assert cfg.session_generator.channels[0] == TextChannel(shared_prefix_pool_size=20000)  # type: ignore[union-attr]


@pytest.mark.parametrize("width", [11, 20, 100])
def test_zipf_layers_are_not_refused_for_the_default_max(width: int) -> None:
    """A zipf count reaches its default max (1000) only far in its tail: not a session of 1000 x width."""
    graph = {"type": "branching", "num_layers_generator": {"type": "zipf"}, "layer_width_generator": width}
    cfg = build_benchmark_config({"client": CLIENT, "session_generator": {"session_graph": graph}})
    assert isinstance(cfg.session_generator.session_graph, BranchingGraph)  # type: ignore[union-attr]


REPRESENTATIVE_OLD = [
    {"client": {**CLIENT, "headers": {"X-Build": "20e12"}}, "wandb": {"group": "1234e56", "tags": ["5e3"]}},
    {
        "client": CLIENT,
        "seed": 7,
        "output_dir": "~/runs",
        "traffic_scheduler": {
            "type": "rate",
            "interval_generator": {"type": "poisson", "arrival_rate": 1000.0},
        },
        "runtime": {"max_requests": 100},
    },
    {"client": {**CLIENT, "model": "2e5"}, "server": {"type": "simulated", "per_token_prefill_time": 2e-05}},
]


@pytest.mark.parametrize("tree", REPRESENTATIVE_OLD)
def test_old_config_ymls_read_back_as_they_were_meant(tmp_path: Path, tree: dict[str, Any]) -> None:
    """Built as 70365f8 built it (PyYAML 1.1 rules), dumped as it dumped it, read back today."""
    meant = build(BenchmarkConfig, yaml.safe_load(old_dump(redacted_dict(build(BenchmarkConfig, tree)))))
    assert load_written_config(written(tmp_path, old_dump(redacted_dict(meant)))) == meant
