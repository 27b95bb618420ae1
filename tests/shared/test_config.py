"""The config: every seed block loads unchanged; bad input names the key path and what is allowed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from veeksha.shared.config import (
    MAX_CONCURRENT_SESSIONS,
    MAX_PREFIX_POOL,
    MAX_SESSION_REQUESTS,
    BenchmarkConfig,
    ConcurrentTraffic,
    FixedGen,
    LinearGraph,
    PoissonIntervals,
    RateTraffic,
    SimulatedServerConfig,
    UniformGen,
)
from veeksha.shared.config_loader import (
    EnvFallbacks,
    build_benchmark_config,
    dump_config_yaml,
    load_benchmark_runs,
    load_capacity_search,
    load_written_config,
)
from veeksha.shared.errors import ConfigError
from veeksha.shared.schema import json_schema
from veeksha.shared.secret import Secret

from tests.conftest import SEED_CONFIGS


def seed_yaml_blocks() -> list[str]:
    return [path.read_text() for path in SEED_CONFIGS]


def write(tmp_path: Path, text: str, name: str = "c.veeksha.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_the_seed_has_four_yaml_blocks() -> None:
    assert len(seed_yaml_blocks()) == 4


@pytest.mark.parametrize("index", range(4))
def test_every_seed_yaml_block_loads_unchanged(tmp_path: Path, index: int) -> None:
    runs = load_benchmark_runs(write(tmp_path, seed_yaml_blocks()[index]))
    assert len(runs) == 1
    assert runs[0].config.wandb.enabled is True


def test_the_complete_example_resolves_every_section(tmp_path: Path) -> None:
    cfg = load_benchmark_runs(write(tmp_path, seed_yaml_blocks()[-1]))[0].config
    assert cfg.seed == 42
    assert cfg.wandb.group == "weekly-regression"
    assert cfg.wandb.tags == ["regression", "llama-3-8b", "vllm-0.4"]
    assert isinstance(cfg.traffic_scheduler, RateTraffic)
    assert cfg.traffic_scheduler.interval_generator == PoissonIntervals(arrival_rate=10.0)
    assert isinstance(cfg.session_generator.session_graph, LinearGraph)
    assert cfg.session_generator.channels[0].body_length_generator.max == 500
    (slo,) = cfg.slos
    assert (slo.name, slo.metric, slo.percentile, slo.value) == ("P99 TTFC", "ttfc", 0.99, 0.5)
    assert cfg.runtime.benchmark_timeout == 300
    assert cfg.runtime.max_sessions == -1


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, seed_yaml_blocks()[-1])
    cfg = load_benchmark_runs(
        path,
        [
            ("server.type", "simulated"),
            ("runtime.benchmark_timeout", "15"),
            ("traffic_scheduler.interval_generator.arrival_rate", "2.5"),
            ("evaluators.0.slos.0.value", "0.25"),
        ],
    )[0].config
    assert cfg.server is not None and cfg.server.type == "simulated"
    assert cfg.runtime.benchmark_timeout == 15
    assert cfg.traffic_scheduler.interval_generator.arrival_rate == 2.5
    assert cfg.slos[0].value == 0.25


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clent: {}", r"clent: unknown key.*did you mean 'client'"),
        (
            "traffic_scheduler: {type: rat}",
            r"traffic_scheduler\.type: 'rat' is not allowed.*did you mean 'rate'",
        ),
        (
            "traffic_scheduler: {type: rate, interval_generator: {type: poisson, arrival_rate: -1}}",
            r"traffic_scheduler\.interval_generator\.arrival_rate: -1 is not allowed; must be >= 2e-06",
        ),
        (
            "runtime: {max_sessions: many}",
            r"runtime\.max_sessions: 'many' is not allowed; expected an integer",
        ),
        (
            "evaluators: [{type: performance, slos: [{name: a, metric: ttft, value: 1}]}]",
            r"evaluators\.0\.slos\.0\.metric: 'ttft' is not allowed.*did you mean 'ttfc'",
        ),
        (
            "evaluators: [{type: performance, slos: [{name: a, metric: ttfc, value: 1, percentile: 1.5}]}]",
            r"evaluators\.0\.slos\.0\.percentile: 1\.5 is not allowed; must be > 0 and <= 1",
        ),
        (
            "session_generator: {type: synthetic, channels: "
            "[{type: text, body_length_generator: {type: uniform, min: 9, max: 2}}]}",
            r"session_generator\.channels\.0\.body_length_generator: min \(9\.0\) must be <= max",
        ),
        (
            "evaluators: [{type: performance, health: {max_error_rate: 1.5}}]",
            r"evaluators\.0\.health\.max_error_rate: 1\.5 is not allowed; must be >= 0 and <= 1",
        ),
        ("wandb: {mode: onlin}", r"wandb\.mode: 'onlin' is not allowed.*did you mean 'online'"),
        ("client: {stream: maybe}", r"client\.stream: 'maybe' is not allowed; expected true or false"),
    ],
)
def test_bad_values_name_the_key_path_and_what_is_allowed(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_benchmark_runs(write(tmp_path, text))


def test_a_missing_file_and_broken_yaml_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_benchmark_runs(tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match=r"line 3: invalid YAML"):
        load_benchmark_runs(write(tmp_path, "a: 1\nb: [\n"))


def test_expand_makes_the_cartesian_product_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        traffic_scheduler:
          type: rate
          interval_generator: {type: poisson, arrival_rate: !expand [1, 2, 4]}
        client:
          stream: !expand [true, false]
        wandb:
          tags: [a, b]
        """,
    )
    runs = load_benchmark_runs(path)
    assert len(runs) == 6
    assert runs[0].params == {
        "traffic_scheduler.interval_generator.arrival_rate": 1,
        "client.stream": True,
    }
    assert [r.config.traffic_scheduler.interval_generator.arrival_rate for r in runs] == [1, 1, 2, 2, 4, 4]
    assert all(r.config.wandb.tags == ["a", "b"] for r in runs)  # a plain list stays a list


def test_a_flag_inside_a_swept_section_is_refused_not_a_silent_end_of_the_sweep(tmp_path: Path) -> None:
    """Setting a key inside a mapping swept with !expand used to replace the whole sweep with {}."""
    path = write(
        tmp_path,
        """
        traffic_scheduler: !expand
          - {type: rate, interval_generator: {type: poisson, arrival_rate: 1}}
          - {type: concurrent, target_concurrent_sessions: 2}
        """,
    )
    with pytest.raises(ConfigError, match=r"traffic_scheduler is swept with !expand in the config file"):
        load_benchmark_runs(path, [("traffic_scheduler.cancel_session_on_failure", "false")])
    # Given whole, the flag replaced the sweep with one run just as unseen: refused too.
    with pytest.raises(ConfigError, match=r"--traffic_scheduler: traffic_scheduler is swept with !expand"):
        load_benchmark_runs(path, [("traffic_scheduler", "{type: concurrent}")])


def test_a_key_with_a_dot_can_be_swept(tmp_path: Path) -> None:
    path = write(tmp_path, "client:\n  additional_sampling_params: {extra.mode: !expand [a, b]}\n")
    runs = load_benchmark_runs(path)
    assert [r.config.client.additional_sampling_params for r in runs] == [
        {"extra.mode": "a"},
        {"extra.mode": "b"},
    ]
    assert runs[0].params == {"client.additional_sampling_params.extra.mode": "a"}


def test_an_expand_inside_an_expand_says_so(tmp_path: Path) -> None:
    path = write(tmp_path, "seed: !expand [!expand [1, 2], 3]\n")
    with pytest.raises(ConfigError, match=r"line 1: an !expand inside an !expand is not supported"):
        load_benchmark_runs(path)


def test_include_splices_another_file(tmp_path: Path) -> None:
    write(tmp_path, "type: concurrent\ntarget_concurrent_sessions: 7\n", "traffic.yml")
    path = write(tmp_path, "traffic_scheduler: !include traffic.yml\n")
    cfg = load_benchmark_runs(path)[0].config
    assert cfg.traffic_scheduler.target_concurrent_sessions == 7


def test_env_supplies_api_base_and_key_but_config_yml_never_holds_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = [
        ("client.headers.X-Api-Key", "hdr-secret-5678"),
        ("client.headers.Authorization", "Bearer tok-9999"),
        ("client.additional_sampling_params.token", "asp-secret-0000"),
        ("client.additional_sampling_params.top_k", "17"),
    ]
    monkeypatch.setenv("OPENAI_API_BASE", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-secret-1234")
    # Loading never reads the environment: the command line passes what it read (runner/cli.py).
    assert load_benchmark_runs(None, overrides)[0].config.client.api_base is None
    fallbacks = EnvFallbacks(api_base="http://127.0.0.1:9/v1", api_key=Secret("sk-env-secret-1234"))
    cfg = load_benchmark_runs(None, overrides, fallbacks)[0].config
    assert cfg.client.api_base == "http://127.0.0.1:9/v1"
    assert cfg.client.api_key == Secret("sk-env-secret-1234")
    text = dump_config_yaml(cfg)
    for secret in ("sk-env-secret-1234", "hdr-secret-5678", "tok-9999", "asp-secret-0000"):
        assert secret not in text
    assert text.count("<redacted>") == 4
    assert "top_k: 17" in text  # not a secret


def test_a_run_that_launches_its_server_is_not_sent_elsewhere_by_openai_api_base() -> None:
    # OPENAI_API_BASE left exported from other work used to win over the launched server's ready_url
    # host: vLLM started and sat idle while every request (and /metrics scrape) went to the other URL.
    fallbacks = EnvFallbacks(api_base="http://10.0.0.9:8000/v1")
    command = [
        ("server.type", "command"),
        ("server.command", "[vllm, serve, m]"),
        ("server.ready_url", "http://127.0.0.1:8123/health"),
    ]
    cfg = load_benchmark_runs(None, command, fallbacks)[0].config
    assert cfg.client.api_base is None  # the launched server's URL, resolved once it runs
    # The variable still serves a run without a server section, and a flag still wins over the server.
    assert load_benchmark_runs(None, [], fallbacks)[0].config.client.api_base == "http://10.0.0.9:8000/v1"
    typed = load_benchmark_runs(None, [*command, ("client.api_base", "http://127.0.0.1:8123/v1")], fallbacks)
    assert typed[0].config.client.api_base == "http://127.0.0.1:8123/v1"


def test_written_config_reads_back(tmp_path: Path) -> None:
    cfg = load_benchmark_runs(write(tmp_path, seed_yaml_blocks()[-1]))[0].config
    (tmp_path / "config.yml").write_text(dump_config_yaml(cfg))
    assert load_written_config(tmp_path / "config.yml") == cfg


def test_capacity_search_config_wraps_a_benchmark_config(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        output_dir: capacity_search_output
        start_value: 5.0
        max_value: 100.0
        expansion_factor: 2.0
        max_iterations: 20
        precision: 2
        benchmark_config:
          traffic_scheduler: {type: rate, interval_generator: {type: poisson, arrival_rate: 1}}
        """,
    )
    cfg = load_capacity_search(path)
    assert cfg.max_value == 100.0
    assert isinstance(cfg.benchmark_config, BenchmarkConfig)
    with pytest.raises(ConfigError, match=r"benchmark_config\.runtime\.max_sesions: unknown key"):
        load_capacity_search(write(tmp_path, "benchmark_config: {runtime: {max_sesions: 3}}"))


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        # The benchmark's own section, written at the top of the search: no pointer said where it goes.
        ("{wandb: {enabled: true}, benchmark_config: {}}", "; did you mean 'benchmark_config.wandb'?"),
        ("{seed: 7, benchmark_config: {}}", "; did you mean 'benchmark_config.seed'?"),
        # A level deeper, the full path of the key's one section.
        (
            "benchmark_config: {benchmark_timeout: 3}",
            "; did you mean 'benchmark_config.runtime.benchmark_timeout'?",
        ),
        # A near spelling of a key of its own mapping still comes first when no section holds the key.
        ("{max_iteration: 3, benchmark_config: {}}", "; did you mean 'max_iterations'?"),
    ],
)
def test_an_unknown_key_of_a_section_below_says_where_it_goes(tmp_path: Path, text: str, hint: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_capacity_search(write(tmp_path, text))
    assert "unknown key; allowed keys: " in str(e.value) and str(e.value).endswith(hint), str(e.value)


def test_an_unknown_key_held_by_several_sections_names_none(tmp_path: Path) -> None:
    # `type` is a key of server, client, traffic_scheduler...: any one named would be a guess.
    with pytest.raises(ConfigError) as e:
        load_benchmark_runs(write(tmp_path, "type: rate"))
    assert str(e.value).startswith("config error at type: unknown key; allowed keys: client, ")
    assert "did you mean" not in str(e.value)


def test_json_schema_describes_every_top_level_section() -> None:
    schema = json_schema(BenchmarkConfig)
    assert set(schema["properties"]) == {
        "seed",
        "output_dir",
        "client",
        "traffic_scheduler",
        "session_generator",
        "evaluators",
        "runtime",
        "trace_recorder",
        "server",
        "server_metrics",
        "wandb",
    }
    variants = schema["properties"]["traffic_scheduler"]["oneOf"]
    assert {v["properties"]["type"]["enum"][0] for v in variants} == {"rate", "concurrent"}


def test_sampling_params_may_be_a_json_string_and_sections_may_be_set_whole(tmp_path: Path) -> None:
    path = write(tmp_path, """client: {additional_sampling_params: '{"temperature": 0.5}'}""")
    cfg = load_benchmark_runs(
        path, [("traffic_scheduler", "{type: concurrent, target_concurrent_sessions: 3}")]
    )[0].config
    assert cfg.client.additional_sampling_params == {"temperature": 0.5}
    assert cfg.traffic_scheduler.target_concurrent_sessions == 3


@pytest.mark.parametrize(
    ("server", "where"),
    [
        ({"ready_url": "localhost:8000/health"}, "server.ready_url"),
        ({"ready_url": "http://127.0.0.1:0/health"}, "server.ready_url"),
        ({"ready_url": "http://127.0.0.1:8000/health", "api_base": "ftp://h/v1"}, "server.api_base"),
    ],
)
def test_a_command_servers_urls_are_checked_when_the_config_is_built(
    server: dict[str, str], where: str
) -> None:
    tree = {"server": {"type": "command", "command": ["srv"], **server}}
    with pytest.raises(ConfigError, match=f"config error at {where}: "):
        build_benchmark_config(tree)


def test_a_bare_number_where_a_length_generator_goes_means_a_fixed_value() -> None:
    cfg = build_benchmark_config({"server": {"type": "simulated", "reasoning_tokens": 64}})
    assert cfg.server == SimulatedServerConfig(reasoning_tokens=FixedGen(value=64))
    uniform = {"type": "uniform", "min": 10, "max": 20}
    cfg = build_benchmark_config({"server": {"type": "simulated", "reasoning_tokens": uniform}})
    assert cfg.server is not None and cfg.server.reasoning_tokens == UniformGen(min=10, max=20)


@pytest.mark.parametrize(
    ("value", "message"),
    [(True, "expected a mapping with 'type'"), (-1, "server.reasoning_tokens.value")],
)
def test_a_bare_number_is_still_checked(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_benchmark_config({"server": {"type": "simulated", "reasoning_tokens": value}})


def test_the_reasoning_field_is_one_of_the_two_spellings() -> None:
    with pytest.raises(ConfigError, match="reasoning_field"):
        build_benchmark_config({"server": {"type": "simulated", "reasoning_field": "thoughts"}})


@pytest.mark.parametrize("text", ["{}", "session_generator: {session_graph: {type: linear}}", "seed: 3"])
def test_a_config_hashes_as_its_own_config_yml_read_back(text: str, tmp_path: Path) -> None:
    """Defaults such as `value: 0` for a float field were 0 in memory and 0.0 once read back: a rerun
    from a run's config.yml named its directory with another hash."""
    import yaml
    from veeksha.shared.config_loader import config_sha256

    (cfg,) = [run.config for run in load_benchmark_runs(write(tmp_path, text))]
    again = build_benchmark_config(yaml.safe_load(dump_config_yaml(cfg)))
    assert config_sha256(again) == config_sha256(cfg)


def test_the_endpoint_a_runs_own_server_picks_is_not_part_of_the_config_hash() -> None:
    # A simulated server takes a free port at each start; the resolved api_base changed the hash
    # (and the directory name) of every run of the same config.
    from dataclasses import replace

    from veeksha.shared.config_loader import config_sha256

    cfg = build_benchmark_config({"server": {"type": "simulated"}})
    one = replace(cfg, client=replace(cfg.client, api_base="http://127.0.0.1:41001/v1"))
    two = replace(cfg, client=replace(cfg.client, api_base="http://127.0.0.1:41002/v1"))
    assert config_sha256(one) == config_sha256(two)
    # An endpoint the user names is part of what was benchmarked.
    user = build_benchmark_config({"client": {"api_base": "http://a:1/v1"}})
    other = build_benchmark_config({"client": {"api_base": "http://b:1/v1"}})
    assert config_sha256(user) != config_sha256(other)


def test_a_quoted_number_is_text_as_written(tmp_path: Path) -> None:
    """Unquoted, YAML 1.1 reads 1.10 as 1.1 and 0123 as 83: those are refused; quoted, the text stays."""
    text = """
    client: {model: '1.10', api_key: '0123', headers: {X-T: '12:30'}}
    wandb: {run_name: '010'}
    """
    cfg = load_benchmark_runs(write(tmp_path, text))[0].config
    assert (cfg.client.model, cfg.client.headers, cfg.wandb.run_name) == ("1.10", {"X-T": "12:30"}, "010")
    assert cfg.client.api_key == Secret("0123")


def test_a_number_that_reads_back_as_written_is_text_where_text_goes(tmp_path: Path) -> None:
    """`--port, 8000` in a server command, `CUDA_VISIBLE_DEVICES: 0`: the text is what was written."""
    text = """
    client: {model: 7, api_key: 123456789, headers: {X-Version: 2.5}}
    server: {type: command, command: [vllm, serve, m, --port, 8000], env: {CUDA_VISIBLE_DEVICES: 0},
             ready_url: 'http://127.0.0.1:8000/health'}
    wandb: {tags: [1.0, -3]}
    evaluators: [{type: performance, slos: [{name: 99, metric: ttfc, value: 1}]}]
    """
    cfg = load_benchmark_runs(write(tmp_path, text))[0].config
    assert cfg.server is not None and cfg.server.command[-1] == "8000"
    assert cfg.server.env == {"CUDA_VISIBLE_DEVICES": "0"}
    assert (cfg.client.model, cfg.client.headers, cfg.wandb.tags) == (
        "7",
        {"X-Version": "2.5"},
        ["1.0", "-3"],
    )
    assert cfg.client.api_key == Secret("123456789") and cfg.slos[0].name == "99"


def test_slos_may_be_spread_over_evaluators_that_share_the_health_thresholds(tmp_path: Path) -> None:
    text = """
    evaluators:
      - {type: performance, slos: [{name: first token, metric: ttfc, value: 1}]}
      - {type: performance, slos: [{name: whole reply, metric: e2e, value: 5}]}
    """
    cfg = load_benchmark_runs(write(tmp_path, text))[0].config
    assert [s.name for s in cfg.slos] == ["first token", "whole reply"]


def test_a_request_parameter_may_add_a_field_the_client_leaves_out() -> None:
    """vLLM's stream_options.continuous_usage_stats: the client sends no stream_options without
    include_usage, nor ignore_eos unless it is true."""
    client = {
        "include_usage": False,
        "ignore_eos": False,
        "additional_sampling_params": {
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "ignore_eos": False,
        },
    }
    cfg = build_benchmark_config({"client": client})
    assert cfg.client.additional_sampling_params["stream_options"]["continuous_usage_stats"] is True


@pytest.mark.parametrize("kind", ["openai_chat_completions", "openai_completions"])
def test_every_field_the_client_puts_in_a_body_is_refused_as_a_request_parameter(kind: str) -> None:
    """additional_sampling_params is merged into the body last: none of it may replace what the
    client sets, or the records would describe a request the server never saw."""
    import orjson
    from veeksha.runner.driver.http.openai import RequestBuilder
    from veeksha.shared.config import ClientConfig

    # Every optional field on, so the body holds all the client can set.
    client = {"type": kind, "model": "m", "min_tokens_param": "min_tokens", "ignore_eos": True}
    body = orjson.loads(RequestBuilder(ClientConfig(**client)).body("hi", 5))
    assert {"model", "stream", "stream_options", "ignore_eos", "min_tokens"} <= set(body)
    for key in body:
        tree = {"client": {**client, "additional_sampling_params": {key: 1}}}
        with pytest.raises(ConfigError, match=rf"client\.additional_sampling_params\.{key}: .*client"):
            build_benchmark_config(tree)
    ok = build_benchmark_config({"client": {**client, "additional_sampling_params": {"temperature": 0.5}}})
    assert ok.client.additional_sampling_params == {"temperature": 0.5}


@pytest.mark.parametrize(
    ("traffic", "start", "top"),
    [("{type: concurrent}", 1, 1), ("{type: rate}", 0.01, 0.01), ("{type: concurrent}", 1, 2.5)],
    ids=["concurrency-1", "rate-at-precision", "concurrency-max-not-whole"],
)
def test_a_capacity_search_within_its_grid_is_accepted(
    tmp_path: Path, traffic: str, start: float, top: float
) -> None:
    text = f"start_value: {start}\nmax_value: {top}\nbenchmark_config: {{traffic_scheduler: {traffic}}}\n"
    assert load_capacity_search(write(tmp_path, text)).max_value == top


def test_the_json_schema_exports_the_upper_bounds() -> None:
    client = json_schema(BenchmarkConfig)["properties"]["client"]["properties"]
    assert client["connect_timeout"]["maximum"] == 7 * 24 * 3600


def test_sizes_at_their_bounds_are_accepted() -> None:
    """The bounds on what the runner allocates up front (a slot per session, a stream per prefix,
    every node of a session) take the largest value they name."""
    cfg = build_benchmark_config(
        {
            "traffic_scheduler": {
                "type": "concurrent",
                "target_concurrent_sessions": MAX_CONCURRENT_SESSIONS,
            },
            "session_generator": {
                "shared_prefix_pool_size": MAX_PREFIX_POOL,
                "session_graph": {
                    "type": "branching",
                    "num_layers_generator": 100,
                    "layer_width_generator": 100,
                },
            },
        }
    )
    assert cfg.traffic_scheduler == ConcurrentTraffic(target_concurrent_sessions=MAX_CONCURRENT_SESSIONS)
    assert 100 * 100 == MAX_SESSION_REQUESTS
