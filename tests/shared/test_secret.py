"""An API key is a Secret: no printed, formatted or written form of a config shows it (the key is
revealed only where the client puts it on the wire: tests/runner/driver/http/test_client_quirks.py)."""

from __future__ import annotations

import copy
import json
import pickle
import traceback

import orjson
import pytest
import yaml
from veeksha.shared.config import BenchmarkConfig, ClientConfig
from veeksha.shared.config_loader import (
    EnvFallbacks,
    build_benchmark_config,
    config_sha256,
    dump_config_yaml,
    load_written_config,
)
from veeksha.shared.errors import ConfigError
from veeksha.shared.jsonio import dump_json
from veeksha.shared.redact import REDACTED
from veeksha.shared.schema import to_dict
from veeksha.shared.secret import Secret

KEY = "sk-secret-type-31337"


def config_with_key() -> BenchmarkConfig:
    return build_benchmark_config({"client": {"api_base": "http://127.0.0.1:9/v1", "api_key": KEY}})


def test_a_key_in_the_config_file_becomes_a_secret() -> None:
    key = config_with_key().client.api_key
    assert isinstance(key, Secret)
    assert key.reveal() == KEY


def test_printed_and_formatted_forms_are_redacted() -> None:
    cfg = config_with_key()
    shown = [repr(cfg), str(cfg), f"{cfg}", f"{cfg.client.api_key}", f"{cfg.client.api_key!r:>40}"]
    shown += ["%s %r" % (cfg.client, cfg.client.api_key), format(cfg.client.api_key, "")]  # noqa: UP031
    for text in shown:
        assert KEY not in text
    assert REDACTED in repr(cfg.client)


def test_a_traceback_holding_the_config_does_not_show_the_key() -> None:
    cfg = config_with_key()
    try:
        raise ValueError(f"bad client {cfg.client}")
    except ValueError as e:
        text = "".join(traceback.format_exception(e))
    assert KEY not in text and REDACTED in text


def test_written_forms_are_redacted() -> None:
    cfg = config_with_key()
    text = dump_config_yaml(cfg)
    assert KEY not in text
    assert yaml.safe_load(text)["client"]["api_key"] == REDACTED
    assert to_dict(cfg)["client"]["api_key"] == REDACTED
    assert KEY not in yaml.safe_dump(to_dict(cfg))
    for data in (dump_json(cfg), dump_json({"key": cfg.client.api_key}), dump_json(to_dict(cfg))):
        assert KEY.encode() not in data and REDACTED.encode() in data
    assert KEY not in json.dumps(to_dict(cfg))
    with pytest.raises(TypeError):  # a JSON encoder without the hook cannot leak it either
        orjson.dumps(cfg.client.api_key)


def test_the_config_hash_does_not_depend_on_the_key() -> None:
    other = build_benchmark_config({"client": {"api_base": "http://127.0.0.1:9/v1", "api_key": "sk-other"}})
    assert config_sha256(config_with_key()) == config_sha256(other)


def test_a_key_given_as_a_plain_string_in_code_is_a_secret_too() -> None:
    client = ClientConfig(api_key=KEY)  # type: ignore[arg-type]  # what a careless caller does
    assert isinstance(client.api_key, Secret) and KEY not in repr(client)


def test_copies_and_the_driver_process_keep_the_real_value() -> None:
    cfg = config_with_key()
    for copied in (copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg))):  # spawn pickles the config
        assert copied == cfg
        assert copied.client.api_key is not None and copied.client.api_key.reveal() == KEY


def test_an_empty_key_is_falsy_and_a_secret_is_immutable() -> None:
    assert not Secret("") and Secret("x")
    with pytest.raises(AttributeError):
        Secret("x")._value = "y"  # type: ignore[misc]


def test_a_key_that_is_no_string_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError, match=r"client\.api_key: a value of type list is not allowed") as info:
        build_benchmark_config({"client": {"api_key": ["sk-in-a-list-777"]}})
    assert "sk-in-a-list-777" not in str(info.value)
    digits = build_benchmark_config(
        {"client": {"api_key": 123456789}}
    ).client.api_key  # YAML `key: 123456789`
    assert digits == Secret("123456789")  # it reads back as written


def test_env_fallbacks_fill_unset_keys_only() -> None:
    fallbacks = EnvFallbacks(api_base="http://127.0.0.1:9/v1", api_key=Secret(KEY))
    filled = build_benchmark_config({}, fallbacks)
    assert filled.client.api_base == "http://127.0.0.1:9/v1"
    assert filled.client.api_key == Secret(KEY)
    given = build_benchmark_config({"client": {"api_base": "http://h:1/v1", "api_key": "k"}}, fallbacks)
    assert (given.client.api_base, given.client.api_key) == ("http://h:1/v1", Secret("k"))


def test_the_written_config_reads_back_with_the_placeholder(tmp_path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(dump_config_yaml(config_with_key()))
    key = load_written_config(path).client.api_key
    assert key is not None and key.reveal() == REDACTED
