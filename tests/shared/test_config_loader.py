"""shared/config_loader.py: `!include` splices any value, the file bounds, and an empty output_dir."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from veeksha.shared.config import SyntheticSessions, UniformGen
from veeksha.shared.config_loader import (
    MAX_PLAIN_YAML_BYTES,
    LoadedRun,
    dump_config_yaml,
    empty_override,
    load_benchmark_runs,
    load_capacity_search,
    load_written_config,
    read_yaml,
)
from veeksha.shared.errors import ConfigError

CLIENT = "client: {api_base: 'http://127.0.0.1:9/v1', model: m}\n"


def write(tmp_path: Path, text: str, name: str = "c.veeksha.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_include_of_a_list_is_spliced_under_its_key(tmp_path: Path) -> None:
    write(
        tmp_path,
        "- {type: performance, slos: [{name: t, metric: ttfc, percentile: 0.9, value: 1}]}\n",
        "ev.yml",
    )
    path = write(tmp_path, CLIENT + "evaluators: !include ev.yml\n")
    (evaluator,) = load_benchmark_runs(path)[0].config.evaluators
    assert [slo.name for slo in evaluator.slos] == ["t"]


def test_include_of_a_single_value_is_spliced_in_place(tmp_path: Path) -> None:
    write(tmp_path, "model-from-file\n", "model.yml")
    path = write(tmp_path, "client: {api_base: 'http://127.0.0.1:9/v1', model: !include model.yml}\n")
    assert load_benchmark_runs(path)[0].config.client.model == "model-from-file"


def test_include_inside_an_included_list(tmp_path: Path) -> None:
    write(tmp_path, "[1, !include two.yml]\n", "seeds.yml")
    write(tmp_path, "2\n", "two.yml")
    path = write(tmp_path, "x: !include seeds.yml\n")
    assert read_yaml(path) == {"x": [1, 2]}


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_an_empty_included_file_is_an_error(tmp_path: Path, text: str) -> None:
    write(tmp_path, text, "wandb.yml")
    path = write(tmp_path, CLIENT + "wandb: !include wandb.yml\n")
    with pytest.raises(
        ConfigError, match=r"c\.veeksha\.yml line 2: !include wandb\.yml: .*wandb\.yml is empty"
    ):
        load_benchmark_runs(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n"])
def test_the_top_level_file_must_still_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="the top level must be a mapping of config sections"):
        read_yaml(path)


def test_an_empty_top_level_file_is_all_defaults(tmp_path: Path) -> None:
    assert read_yaml(write(tmp_path, "")) == {}


def test_the_config_file_is_bounded_like_a_run_directorys_config_yml(tmp_path: Path) -> None:
    path = write(tmp_path, CLIENT + "#" * MAX_PLAIN_YAML_BYTES + "\n")
    with pytest.raises(ConfigError, match=f"at most {MAX_PLAIN_YAML_BYTES} are allowed"):
        read_yaml(path)


def test_an_included_file_is_bounded_too(tmp_path: Path) -> None:
    write(tmp_path, "tags: []\n" + "#" * MAX_PLAIN_YAML_BYTES + "\n", "wandb.yml")
    path = write(tmp_path, CLIENT + "wandb: !include wandb.yml\n")
    with pytest.raises(ConfigError, match=f"wandb.yml is .* bytes; at most {MAX_PLAIN_YAML_BYTES}"):
        read_yaml(path)


@pytest.mark.parametrize("path", ["/dev/null", "/dev/zero"])
def test_a_config_that_is_not_a_regular_file_is_refused(path: str) -> None:
    with pytest.raises(ConfigError, match=f"config file {path} is not a regular file"):
        read_yaml(Path(path))


@pytest.mark.parametrize("value", ["''", "'  '"])
def test_an_empty_output_dir_is_refused(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, CLIENT + f"output_dir: {value}\n")
    with pytest.raises(ConfigError, match="config error at output_dir: empty"):
        load_benchmark_runs(path)


def test_an_empty_capacity_search_output_dir_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "output_dir: ''\nbenchmark_config: {" + CLIENT.strip() + "}\n")
    with pytest.raises(ConfigError, match="config error at output_dir: empty"):
        load_capacity_search(path)


def test_a_home_in_output_dir_is_expanded_where_the_config_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`output_dir: ~/runs` made a directory named `~` in the working directory. Expanded once, in the
    config: config.yml, the run directories and every reader of the config see the same path."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_benchmark_runs(write(tmp_path, CLIENT + "output_dir: ~/runs\n"))[0].config
    assert cfg.output_dir == str(tmp_path / "home" / "runs")
    flagged = load_benchmark_runs(None, [("output_dir", "~/flagged")])[0].config
    assert flagged.output_dir == str(tmp_path / "home" / "flagged")
    written = write(tmp_path, dump_config_yaml(cfg), "config.yml")
    assert load_written_config(written) == cfg


def test_a_home_in_a_capacity_search_output_dir_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = write(
        tmp_path, "output_dir: ~/caps\nbenchmark_config: {output_dir: ~/x, " + CLIENT.strip() + "}\n"
    )
    search = load_capacity_search(path)
    assert (search.output_dir, search.benchmark_config.output_dir) == (
        str(tmp_path / "caps"),
        str(tmp_path / "x"),
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (CLIENT + "output_dir: ~nouser-x9/runs\n", "output_dir"),
        ("output_dir: ~nouser-x9/runs\nbenchmark_config: {" + CLIENT.strip() + "}\n", "output_dir"),
        (
            "benchmark_config: {output_dir: ~nouser-x9/runs, " + CLIENT.strip() + "}\n",
            "benchmark_config.output_dir",
        ),
    ],
    ids=["run", "search", "search-benchmark-config"],
)
def test_an_output_dir_under_an_unknown_users_home_is_one_line(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    load = load_capacity_search if "benchmark_config" in text else load_benchmark_runs
    with pytest.raises(ConfigError) as refused:
        load(path)
    assert str(refused.value) == (
        f"config error at {key}: '~nouser-x9/runs' starts with ~, but nouser-x9 has no home directory "
        "on this machine; give the full path"
    )


def test_an_empty_override_says_how_to_unset_a_key() -> None:
    """`--x "$UNSET"` is refused, not taken as null (README): the line says what unsets a key."""
    assert empty_override("--client.model") == (
        "--client.model is empty; give a value, `null` to unset the key, or leave the flag out"
    )


def test_a_search_config_given_as_text_is_not_shown(tmp_path: Path) -> None:
    path = write(tmp_path, "benchmark_config: 'api_key=SEKRET'\n")
    with pytest.raises(ConfigError, match=r"at benchmark_config: its value \(not shown") as info:
        load_capacity_search(path)
    assert "SEKRET" not in str(info.value)


def test_a_key_without_the_space_after_its_colon_never_reaches_the_config(tmp_path: Path) -> None:
    """`{api_key:sk}` is one key `api_key:sk` (YAML needs `: `): it was sent and written to config.yml."""
    flag = ("client.additional_sampling_params", "{api_key:SEKRET}")
    with pytest.raises(ConfigError, match="put a space after the colon") as info:
        load_benchmark_runs(write(tmp_path, CLIENT), [flag])
    assert "SEKRET" not in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        # A JSON schema may name a property `a:b`: below the parameter names, a key with a value is data.
        "additional_sampling_params: {response_format: {schema: {properties: {'a:b': {type: string}}}}}",
        # Anchors and aliases as YAML means them.
        "headers: &h {X-A: '1'}, additional_sampling_params: {extra: *h}",
        "headers: {X-A: &v 'a:b'}, additional_sampling_params: {top_k: 5, note: *v}",
    ],
)
def test_colons_and_anchors_used_as_yaml_means_them_are_accepted(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "client: {api_base: 'http://127.0.0.1:9/v1', model: m, " + text + "}\n")
    assert load_benchmark_runs(path)[0].config.client.model == "m"


# One anchor used twice: YAML gives both uses the same object, and a sweep or a flag written at one
# use changed the other too.
ALIASED_LENGTHS = """
session_generator:
  type: synthetic
  channels:
    - type: text
      body_length_generator: &len {type: uniform, min: 10, max: MAX}
  output_spec:
    text:
      output_length_generator: *len
"""


def lengths(run: LoadedRun) -> tuple[float, float]:
    sessions = run.config.session_generator
    assert isinstance(sessions, SyntheticSessions)
    body = sessions.channels[0].body_length_generator
    output = sessions.output_spec.text.output_length_generator
    assert isinstance(body, UniformGen) and isinstance(output, UniformGen)
    return body.max, output.max


def test_each_use_of_an_aliased_sweep_is_swept_on_its_own(tmp_path: Path) -> None:
    path = write(tmp_path, CLIENT + ALIASED_LENGTHS.replace("MAX", "!expand [100, 200]"))
    runs = load_benchmark_runs(path)
    assert [lengths(run) for run in runs] == [(100, 100), (100, 200), (200, 100), (200, 200)]
    assert [list(run.params.values()) for run in runs] == [list(lengths(run)) for run in runs]


def test_a_flag_on_an_aliased_mapping_changes_only_the_key_it_names(tmp_path: Path) -> None:
    path = write(tmp_path, CLIENT + ALIASED_LENGTHS.replace("MAX", "100"))
    flag = ("session_generator.output_spec.text.output_length_generator.max", "300")
    (run,) = load_benchmark_runs(path, [flag])
    assert lengths(run) == (100, 300)


SWEPT_TIMEOUT = CLIENT + "runtime: {max_sessions: 2, benchmark_timeout: !expand [5, 10]}\n"


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        (
            ("runtime.benchmark_timeout", "5"),
            "--runtime.benchmark_timeout: runtime.benchmark_timeout is swept",
        ),
        (("runtime", "{max_sessions: 3}"), "--runtime: runtime.benchmark_timeout is swept"),
    ],
    ids=["the-swept-key", "its-section"],
)
def test_a_flag_that_would_replace_a_sweep_is_refused(
    tmp_path: Path, flag: tuple[str, str], expected: str
) -> None:
    path = write(tmp_path, SWEPT_TIMEOUT)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_benchmark_runs(path, [flag])


def test_a_flag_beside_a_swept_key_keeps_the_sweep(tmp_path: Path) -> None:
    runs = load_benchmark_runs(write(tmp_path, SWEPT_TIMEOUT), [("runtime.max_sessions", "3")])
    assert [(r.config.runtime.benchmark_timeout, r.config.runtime.max_sessions) for r in runs] == [
        (5, 3),
        (10, 3),
    ]


# A double-quoted YAML `\udcXX` (or `\ud800`) is a lone surrogate: valid text in the file, but no
# UTF-8 file can hold it, and the run failed hashing its config after its server had started.
@pytest.mark.parametrize(
    ("text", "flags", "key"),
    [
        ('output_dir: "out\\udce9"\n', [], "output_dir"),
        ('wandb: {tags: !expand [[a], ["b\\udce9"]]}\n', [], "wandb.tags"),
        ("", [("client.model", '"m\\udce9"')], "client.model"),
        (
            "",
            [("client.additional_sampling_params", '{"k\\udce9": 1}')],
            "client.additional_sampling_params.k",
        ),
    ],
    ids=["output-dir", "in-an-expand", "flag-value", "a-key"],
)
def test_a_lone_surrogate_escape_is_refused_naming_its_key(
    tmp_path: Path, text: str, flags: list[tuple[str, str]], key: str
) -> None:
    path = write(tmp_path, CLIENT + text)
    with pytest.raises(ConfigError, match=f"config error at {re.escape(key)}.*lone surrogate"):
        load_benchmark_runs(path, flags)
