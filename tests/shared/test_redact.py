"""The one secret rule: by key name, anywhere in the tree; `max_tokens` is not a secret."""

import pytest
from veeksha.shared.redact import (
    REDACTED,
    is_secret_key,
    may_hold_secret,
    redact,
    redact_argv,
    redact_params,
    secret_values,
)


def test_secret_key_names() -> None:
    for key in (
        "api_key",
        "API_KEY",
        "Authorization",
        "password",
        "secret",
        "token",
        "openai_api_key",
        "hf_token",
        "client_secret",
        "db_password",
        "X-Api-Key",
        "X-Apikey",
        "x_apikey",
    ):
        assert is_secret_key(key), key
    for key in ("max_tokens", "max_completion_tokens", "min_tokens", "tokenizer", "keys", "model"):
        assert not is_secret_key(key), key


def test_redact_walks_nested_mappings_and_lists() -> None:
    tree = {
        "client": {"api_key": "sk-1", "headers": {"Authorization": "Bearer x"}},
        "server": {"env": {"HF_TOKEN": "hf-2", "PORT": "8000"}},
        "list": [{"token": "t"}],
        "max_tokens": 5,
        "api_key_unset": None,
    }
    out = redact(tree)
    assert out["client"] == {"api_key": REDACTED, "headers": {"Authorization": REDACTED}}
    assert out["server"]["env"] == {"HF_TOKEN": REDACTED, "PORT": REDACTED}  # env: every value
    assert out["list"] == [{"token": REDACTED}]
    assert out["max_tokens"] == 5


def test_every_server_env_value_is_a_secret_value_to_scrub() -> None:
    server = {"env": {"MY_SERVICE_CRED": "abc-123", "EMPTY": ""}, "command": ["x", "--api-key", "k-9"]}
    tree = {"server": server}
    assert sorted(secret_values(tree)) == ["abc-123", "k-9"]


def test_redact_argv_hides_values_of_secret_flags() -> None:
    argv = [
        "veeksha-run",
        "--client.api_key",
        "sk-123",
        "--client.headers.Authorization=Bearer z",
        "--client.model",
        "m",
    ]
    assert redact_argv(argv) == [
        "veeksha-run",
        "--client.api_key",
        REDACTED,
        f"--client.headers.Authorization={REDACTED}",
        "--client.model",
        "m",
    ]


def test_redact_argv_hides_one_server_command_item_set_by_flag() -> None:
    """Out of its list, an item cannot be told apart from the value after `--api-key`."""
    argv = [
        "veeksha-run",
        "--server.command.4",
        "sk-123",
        "--server.command.5=sk-456",
        "--server.ready_url",
        "u",
    ]
    assert redact_argv(argv) == [
        "veeksha-run",
        "--server.command.4",
        REDACTED,
        f"--server.command.5={REDACTED}",
        "--server.ready_url",
        "u",
    ]


def test_no_config_field_except_api_key_looks_like_a_secret() -> None:
    """A field named like a secret would be redacted out of config.yml and never read back."""
    import dataclasses

    from veeksha.shared import config

    names = {
        f.name
        for obj in vars(config).values()
        if dataclasses.is_dataclass(obj)
        for f in dataclasses.fields(obj)
    }
    assert {n for n in names if is_secret_key(n)} == {"api_key"}


def test_a_server_command_line_loses_its_secret_flag_values() -> None:
    cmd = ["vllm", "serve", "m", "--api-key", "sk-cmd-1", "--hf-token=hf-2", "--port", "8000"]
    assert redact({"command": cmd})["command"] == [
        "vllm",
        "serve",
        "m",
        "--api-key",
        REDACTED,
        f"--hf-token={REDACTED}",
        "--port",
        "8000",
    ]


def test_redact_argv_hides_secrets_inside_mappings_given_whole() -> None:
    argv = [
        "veeksha-run",
        "--client.headers",
        '{"Authorization": "Bearer hdr-9"}',
        "--client.additional_sampling_params={token: t-8, top_p: 0.9}",
    ]
    out = " ".join(redact_argv(argv))
    assert "hdr-9" not in out and "t-8" not in out
    assert "top_p" in out


def test_secret_values_are_collected_for_scrubbing() -> None:
    from veeksha.shared.redact import secret_values

    tree = {"token": "t-1", "nested": {"x_api_key": "k-2"}, "cmd": ["--api-key", "k-3"], "top_p": 1}
    assert sorted(secret_values(tree)) == ["k-2", "k-3", "t-1"]


def test_redact_argv_hides_every_server_env_value_however_it_is_given() -> None:
    """server.env carries tokens under names no rule can guess: each of its values is a secret, as
    a whole mapping, as one dotted key, or as one dotted key with `=`."""
    argv = [
        "veeksha-run",
        "--server.env",
        '{"MY_SERVICE_CRED": "cred-1", "HF_TOKEN": "hf-2"}',
        "--server.env={OTHER: other-3}",
        "--server.env.PLAIN_NAME",
        "plain-4",
        "--server.env.ALSO_PLAIN=plain-5",
        "--server.type",
        "command",
    ]
    out = redact_argv(argv)
    joined = " ".join(out)
    for secret in ("cred-1", "hf-2", "other-3", "plain-4", "plain-5"):
        assert secret not in joined
    assert "MY_SERVICE_CRED" in joined and "PLAIN_NAME" in joined  # the names stay: they say what was set
    assert out[-2:] == ["--server.type", "command"]


def test_redact_argv_reads_a_flag_after_a_switch_as_a_flag() -> None:
    argv = ["veeksha-run", "--quiet", "--client.api_key=sk-7", "--verbose", "--server.env.X", "x-8"]
    assert redact_argv(argv) == [
        "veeksha-run",
        "--quiet",
        f"--client.api_key={REDACTED}",
        "--verbose",
        "--server.env.X",
        REDACTED,
    ]


def test_sweep_parameters_are_redacted_as_their_run_config_is() -> None:
    params = {
        "server.env.PLAIN": "plain-9",
        "client.api_key": "sk-10",
        "server.env": {"X": "x-11"},
        "client.headers": {"Authorization": "Bearer h-12", "X-Trace": "t"},
        "traffic_scheduler.interval_generator.arrival_rate": 5,
    }
    tree = {
        "server": {"env": {"X": "x-11"}},  # server.env.PLAIN is not in it: judged by its path
        "client": {"api_key": "sk-10", "headers": {"Authorization": "Bearer h-12", "X-Trace": "t"}},
        "traffic_scheduler": {"interval_generator": {"arrival_rate": 5}},
    }
    assert redact_params(params, tree) == {
        "server.env.PLAIN": REDACTED,
        "client.api_key": REDACTED,
        "server.env": {"X": REDACTED},
        "client.headers": {"Authorization": REDACTED, "X-Trace": "t"},
        "traffic_scheduler.interval_generator.arrival_rate": 5,
    }


def test_a_sweep_over_a_server_env_value_labels_its_runs_without_it(tmp_path) -> None:
    from veeksha.shared.config_loader import load_benchmark_runs

    config = tmp_path / "c.veeksha.yml"
    config.write_text(
        "server: {type: command, command: [s], ready_url: 'http://127.0.0.1:1/health',"
        " env: {CRED: !expand [cred-a-13, cred-b-14]}}\n"
    )
    runs = load_benchmark_runs(config, [])
    assert [r.params for r in runs] == [{"server.env.CRED": REDACTED}] * 2
    assert [r.config.server.env["CRED"] for r in runs] == ["cred-a-13", "cred-b-14"]  # type: ignore[union-attr]


def test_secret_query_parameters_and_passwords_in_urls_are_hidden() -> None:
    tree = {
        "client": {"api_base": "https://gw.example/v1?api-version=2024&key=qk-15&x-token=qt-16"},
        "server_metrics": {"url": "http://user:pw-17@h:9000/metrics?sig=qs-18"},
        "note": "http://h/v1?key=not-a-url-field",  # any string that is a URL
    }
    clean = redact(tree)
    assert clean["client"]["api_base"] == (
        f"https://gw.example/v1?api-version=2024&key={REDACTED}&x-token={REDACTED}"
    )
    assert clean["server_metrics"]["url"] == f"http://{REDACTED}@h:9000/metrics?sig={REDACTED}"
    assert clean["note"] == f"http://h/v1?key={REDACTED}"
    basic = "dXNlcjpwdy0xNw=="  # base64("user:pw-17"): what a client sends as Basic auth
    assert sorted(secret_values(tree)) == sorted(
        [basic, "not-a-url-field", "pw-17", "qk-15", "qs-18", "qt-16"]
    )


def test_a_url_without_secrets_is_left_as_it_is() -> None:
    url = "http://127.0.0.1:8000/v1?api-version=2024-02-01&max_tokens=5"
    assert redact({"u": url}) == {"u": url} and secret_values({"u": url}) == []


def test_a_url_given_on_the_command_line_loses_its_secrets_in_argv() -> None:
    argv = [
        "veeksha-run",
        "--client.api_base",
        "http://h/v1?key=k-19",
        "--server_metrics.url=http://h/m?token=t-20",
    ]
    assert redact_argv(argv) == [
        "veeksha-run",
        "--client.api_base",
        f"http://h/v1?key={REDACTED}",
        f"--server_metrics.url=http://h/m?token={REDACTED}",
    ]


def test_a_sweep_over_a_server_command_key_labels_its_runs_without_it(tmp_path) -> None:
    from veeksha.shared.config_loader import load_benchmark_runs

    config = tmp_path / "c.veeksha.yml"
    config.write_text(
        "server: {type: command, command: [s, --api-key, !expand [key-aaaa1, key-bbbb2]],"
        " ready_url: 'http://127.0.0.1:1/health'}\n"
    )
    runs = load_benchmark_runs(config, [])
    assert [r.params for r in runs] == [{"server.command.2": REDACTED}] * 2


@pytest.mark.parametrize(
    "argv",
    [
        ["--server.env", "HF_TOKEN: abc-24"],  # block-style YAML: the command line reads a mapping
        ["--server", "env: {X: abc-24}"],
        ["--client.headers", "Authorization: Bearer abc-24"],
        ["--client.api_base", "HTTP://u:abc-24@h/v1"],  # any case of scheme
    ],
)
def test_redact_argv_reads_a_value_as_the_command_line_does(argv: list[str]) -> None:
    assert "abc-24" not in " ".join(redact_argv(["veeksha-run", *argv]))


def test_a_flag_value_given_with_equals_is_a_secret_value_to_scrub() -> None:
    # `--api-key=VALUE` was hidden in config.yml but never scrubbed from server output and records.
    command = ["vllm", "serve", "M", "--api-key=sk-eq-21", "--hf-token", "hf-22"]
    assert sorted(secret_values({"server": {"command": command}})) == ["hf-22", "sk-eq-21"]


def test_env_assignments_and_whole_command_strings_lose_their_secrets() -> None:
    command = [
        "env",
        "VLLM_API_KEY=env-23",
        "LOG_LEVEL=INFO",
        "sh",
        "-c",
        "exec vllm serve M --api-key sk-24 --port 1",
    ]
    clean = redact({"command": command})["command"]
    assert clean == [
        "env",
        f"VLLM_API_KEY={REDACTED}",
        "LOG_LEVEL=INFO",
        "sh",
        "-c",
        f"exec vllm serve M --api-key {REDACTED} --port 1",
    ]
    assert sorted(secret_values({"command": command})) == ["env-23", "sk-24"]
    assert redact({"stop": ["Human: ", "### End"]}) == {"stop": ["Human: ", "### End"]}  # no flag: as is


def test_headers_named_or_shaped_like_credentials_are_secret() -> None:
    headers = {
        "Authentication": "a-25",  # named like a credential
        "X-Auth": "Token t-26",
        "X-Gateway": "Bearer gw-token-26",  # shaped like one: a scheme and a token
        "X-Route": "0123456789abcdefXYZ",  # one long opaque word
        "Accept": "text/event-stream",
        "X-Priority": "high",  # neither: shown, and never scrubbed from messages
        "Cache-Control": "no-cache",
    }
    assert redact({"headers": headers})["headers"] == {
        **headers,
        "Authentication": REDACTED,
        "X-Auth": REDACTED,
        "X-Gateway": REDACTED,
        "X-Route": REDACTED,
    }
    # A credential after any scheme is scrubbed alone too: servers echo it without the scheme.
    assert sorted(secret_values({"headers": headers})) == sorted(
        ["a-25", "Token t-26", "t-26", "Bearer gw-token-26", "gw-token-26", "0123456789abcdefXYZ"]
    )
    argv = ["veeksha-run", "--client.headers.X-Auth", "x-27", "--client.headers.Accept=a/b"]
    assert redact_argv(argv) == [
        "veeksha-run",
        "--client.headers.X-Auth",
        REDACTED,
        "--client.headers.Accept=a/b",
    ]


def test_a_header_mapping_given_as_one_json_string_is_redacted() -> None:
    # A sweep over `headers: !expand ['{"Authorization": "Bearer ..."}']` labelled its runs with it.
    tree = {"client": {"headers": '{"Authorization": "Bearer sk-28"}'}}
    assert redact(tree)["client"]["headers"] == '{"Authorization":"<redacted>"}'
    assert "sk-28" in secret_values(tree)
    assert secret_values({"headers": "not a mapping"}) == []
    params = {"client.headers": '{"Authorization": "Bearer sk-28"}'}
    assert redact_params(params, tree) == {"client.headers": '{"Authorization":"<redacted>"}'}


def test_url_user_info_and_camel_case_or_signed_query_credentials_are_hidden() -> None:
    url = "http://sk-ui-29@h:1/v1?accessToken=qt-30&X-Amz-Signature=sig-31&api-version=2024"
    assert redact({"u": url})["u"] == (
        f"http://{REDACTED}@h:1/v1?accessToken={REDACTED}&X-Amz-Signature={REDACTED}&api-version=2024"
    )
    assert sorted(secret_values({"u": url})) == ["qt-30", "sig-31", "sk-ui-29"]


def test_a_header_set_by_flag_may_hold_a_secret_unless_it_is_plain() -> None:
    # `--client.headers.X-Auth Token sk-...` echoed "sk-..." as an unexpected argument.
    assert may_hold_secret("client.headers.X-Auth") and may_hold_secret("client.headers.Authentication")
    assert not may_hold_secret("client.headers.Accept")
