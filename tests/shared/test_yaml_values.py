"""How a value's YAML text becomes a config value, in a file and in a `--section.key VALUE` flag.

A flag's value is read as YAML (`--x 5` is a number, `--x '[1, 2]'` a list), but a command line has
no comments and no anchors: a value YAML would cut at ` #` is the text as typed, and one YAML reads
as null is refused unless it is written `null` (or `~`). Numbers read as YAML 1.2 does: `1e3` is a
number, and an integer with a leading zero (octal in YAML 1.1: `0042` is 34) is refused.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from veeksha.shared.config import BenchmarkConfig, PoissonIntervals, SimulatedServerConfig
from veeksha.shared.config_loader import (
    dump_config_yaml,
    load_benchmark_runs,
    load_written_config,
    parse_override_value,
)
from veeksha.shared.errors import ConfigError
from veeksha.shared.secret import Secret

RATE = "traffic_scheduler.interval_generator.arrival_rate"


def write(tmp_path: Path, text: str, name: str = "c.veeksha.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def with_flags(*flags: tuple[str, str]) -> BenchmarkConfig:
    return load_benchmark_runs(None, list(flags))[0].config


# ---------------------------------------------------------------- flags: comments and nulls


@pytest.mark.parametrize(
    ("flag", "text", "expected"),
    [
        ("wandb.notes", "PR #12 baseline", "PR #12 baseline"),
        ("wandb.notes", "#12", "#12"),
        ("wandb.run_name", "run # two", "run # two"),
    ],
    ids=["hash-inside", "hash-first", "spaced-hash"],
)
def test_a_flag_value_with_a_hash_is_the_text_as_typed(flag: str, text: str, expected: str) -> None:
    """A shell has already split the command line: a ` #` in a flag's value is text, not a comment."""
    section, key = flag.split(".")
    assert getattr(getattr(with_flags((flag, text)), section), key) == expected


@pytest.mark.parametrize("text", ["#tok", "sk-abc #def"])
def test_an_api_key_with_a_hash_is_the_key_as_typed(text: str) -> None:
    """Cut at the `#`, the key was null (or its first half), and OPENAI_API_KEY was sent instead."""
    assert with_flags(("client.api_key", text)).client.api_key == Secret(text)


def test_a_number_flag_with_a_comment_is_refused_as_text() -> None:
    """Not the 5 before the `#`: the value typed is not a number, and the error shows it as typed (it
    showed '5 ', cut at the `#` as a URL is)."""
    with pytest.raises(ConfigError) as e:
        with_flags(("runtime.max_sessions", "5 # five"))
    assert str(e.value) == (
        "config error at runtime.max_sessions: '5 # five' is not allowed; expected an integer >= -1"
    )


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("PR #12 ok", "'PR #12 ok'"),
        ("http://u:SEKRET@host/v1", "'http://<redacted>@host/v1'"),
        ("localhost:8000/v1?token=SEKRET", "'localhost:8000/v1?<redacted>'"),
        ("host/cb#access_token=SEKRET", "'host/cb'"),
    ],
)
def test_a_bad_value_is_shown_as_typed_unless_it_may_be_a_url_holding_a_secret(text: str, shown: str) -> None:
    with pytest.raises(ConfigError) as e:
        with_flags(("runtime.max_sessions", text))
    line = str(e.value)
    assert line.startswith(f"config error at runtime.max_sessions: {shown} is not allowed"), line


def test_yaml_in_a_flag_keeps_its_comments() -> None:
    """A section given whole (`--server "$(cat server.yml)"`) is YAML, comments and all."""
    cfg = with_flags(("server", "type: simulated  # the built-in one\nmax_batch_size: 8\n"))
    assert isinstance(cfg.server, SimulatedServerConfig) and cfg.server.max_batch_size == 8


@pytest.mark.parametrize("text", ["null", "~", "Null", "NULL", " null "])
def test_null_written_out_unsets_a_key(text: str) -> None:
    assert with_flags(("client.model", "m"), ("client.model", text)).client.model is None


@pytest.mark.parametrize(
    ("flag", "text", "shown"),
    [
        ("wandb.notes", "&tok", "'&tok'"),
        ("wandb.notes", " ", "' '"),
        ("client.model", "&m", "'&m'"),
    ],
    ids=["anchor", "spaces", "model-anchor"],
)
def test_a_flag_value_yaml_reads_as_null_is_refused(flag: str, text: str, shown: str) -> None:
    """`--wandb.notes '&tok'` was null: the key silently unset. Only `null` (or `~`) unsets a key."""
    with pytest.raises(ConfigError) as refused:
        with_flags((flag, text))
    message = str(refused.value)
    assert message.startswith(f"--{flag}: {shown} reads as null in YAML") and "\n" not in message
    assert "write null to unset the key" in message and f"--{flag} \"'" in message


@pytest.mark.parametrize("flag", ["client.api_key", "client.headers.Authorization", "server.env.HF_TOKEN"])
def test_a_secret_flag_that_reads_as_null_is_refused_without_showing_it(flag: str) -> None:
    """Unset, client.api_key fell back to OPENAI_API_KEY without a word."""
    with pytest.raises(ConfigError) as refused:
        parse_override_value("&sk-SEKRET", flag)
    message = str(refused.value)
    assert message.startswith(f"--{flag}: its value (not shown: it may hold a secret) reads as null")
    assert "SEKRET" not in message


def test_an_anchor_on_nothing_inside_a_flag_is_refused_too() -> None:
    """`--client '{model: m, api_key: &sk-...}'`: the key was null inside the mapping."""
    with pytest.raises(ConfigError, match="an anchor needs a value after it") as refused:
        with_flags(("client", "{model: m, api_key: &sk-SEKRET}"))
    assert "SEKRET" not in str(refused.value)


# ---------------------------------------------------------------- numbers as YAML 1.2 reads them


@pytest.mark.parametrize(("text", "value"), [("1e3", 1000.0), ("1.0e3", 1000.0), ("2E+1", 20.0)])
def test_a_number_in_e_notation_is_a_number_in_a_file(tmp_path: Path, text: str, value: float) -> None:
    """PyYAML (YAML 1.1) read `1e3` as the text '1e3', refused as "not a number"."""
    path = write(tmp_path, f"traffic_scheduler: {{interval_generator: {{arrival_rate: {text}}}}}\n")
    gen = load_benchmark_runs(path)[0].config.traffic_scheduler.interval_generator
    assert gen == PoissonIntervals(arrival_rate=value)


def test_a_number_in_e_notation_is_a_number_in_a_flag() -> None:
    cfg = with_flags(("server.type", "simulated"), ("server.per_token_prefill_time", "2e-5"), (RATE, "1e1"))
    assert isinstance(cfg.server, SimulatedServerConfig) and cfg.server.per_token_prefill_time == 2e-5
    assert cfg.traffic_scheduler.interval_generator == PoissonIntervals(arrival_rate=10.0)


@pytest.mark.parametrize("text", ["1e999", "-1e999"])
def test_a_number_beyond_a_double_is_still_refused_as_infinity(text: str) -> None:
    with pytest.raises(ConfigError, match="NaN and infinity are never valid"):
        with_flags(("runtime.benchmark_timeout", text))


def test_e_notation_where_text_goes_is_refused_like_any_respelled_number(tmp_path: Path) -> None:
    """Unquoted, `1e3` is now the number 1000.0: a text field asks for it quoted, as for 1.10."""
    with pytest.raises(ConfigError, match=r"client\.model: the number 1000\.0 is not allowed; expected text"):
        load_benchmark_runs(write(tmp_path, "client: {model: 1e3}\n"))
    assert load_benchmark_runs(write(tmp_path, "client: {model: '1e3'}\n"))[0].config.client.model == "1e3"


# ---------------------------------------------------------------- leading zeros


@pytest.mark.parametrize(
    ("text", "flags", "expected"),
    [
        ("seed: 0042\n", (), "config error at seed: 0042 is not allowed; write 42 without the leading zero"),
        ("", (("runtime.max_sessions", "010"),), "runtime.max_sessions: 010 is not allowed; write 10 "),
        ("", (("runtime", "{max_sessions: 010}"),), "runtime.max_sessions: 010 is not allowed; write 10 "),
        ("", (("runtime.num_drivers", "02"),), "runtime.num_drivers: 02 is not allowed; write 2 "),
        ("runtime: {benchmark_timeout: 0300}\n", (), "runtime.benchmark_timeout: 0300 is not allowed"),
        ("seed: -007\n", (), "seed: -007 is not allowed; write -7 without"),
        (
            "client: {additional_sampling_params: {seed: 0042}}\n",
            (),
            "client.additional_sampling_params.seed: 0042 is not allowed; write 42",
        ),
    ],
    ids=["seed", "flag", "inside-a-flag", "int-or-auto", "float", "negative", "request-parameter"],
)
def test_an_integer_with_a_leading_zero_is_refused(
    tmp_path: Path, text: str, flags: tuple[tuple[str, str], ...], expected: str
) -> None:
    """YAML 1.1 reads 0042 as octal 34: the run would have used a seed nobody wrote."""
    with pytest.raises(ConfigError) as refused:
        load_benchmark_runs(write(tmp_path, text), list(flags))
    assert expected in str(refused.value), refused.value


@pytest.mark.parametrize(
    ("text", "value"), [("0", 0), ("-0", 0), ("42", 42), ("0.5", 0.5), ("0x1F", 31), ("'0042'", "0042")]
)
def test_numbers_without_a_leading_zero_read_as_before(tmp_path: Path, text: str, value: object) -> None:
    path = write(tmp_path, f"client: {{additional_sampling_params: {{n: {text}}}}}\n")
    assert load_benchmark_runs(path)[0].config.client.additional_sampling_params == {"n": value}


def test_text_that_reads_as_e_notation_is_quoted_in_config_yml(tmp_path: Path) -> None:
    """Written unquoted, the model '1e3' would read back as a number, and `evaluate` refuse the run."""
    cfg = load_benchmark_runs(write(tmp_path, "client: {model: '1e3'}\nwandb: {notes: '2E-5'}\n"))[0].config
    written = write(tmp_path, dump_config_yaml(cfg), "config.yml")
    assert load_written_config(written) == cfg
