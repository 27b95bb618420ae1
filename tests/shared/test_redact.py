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
    # The user alone is a token, found also as clients send it: Basic base64("sk-ui-29:").
    assert sorted(secret_values({"u": url})) == ["c2stdWktMjk6", "qt-30", "sig-31", "sk-ui-29"]


def test_a_header_set_by_flag_may_hold_a_secret_unless_it_is_plain() -> None:
    # `--client.headers.X-Auth Token sk-...` echoed "sk-..." as an unexpected argument.
    assert may_hold_secret("client.headers.X-Auth") and may_hold_secret("client.headers.Authentication")
    assert not may_hold_secret("client.headers.Accept")


def _scrubbed(text: str, tree: object) -> str:
    from veeksha.shared.redact import scrub_list, scrub_text

    return scrub_text(text, scrub_list(secret_values(tree)))


def test_url_credentials_percent_encoded_by_the_client_are_scrubbed() -> None:
    # httpx re-encodes `^ { } = " ...` and non-ASCII in a password or query value in its messages.
    import httpx

    url = 'http://usr:P^DDDD4444{x}@127.0.0.1:18555/v1?api_key=Qé"EEEE5555'
    shown = str(httpx.URL(url))
    assert "%5EDDDD4444%7Bx%7D" in shown and "Q%C3%A9%22EEEE5555" in shown
    for text in (shown, shown.lower(), url):
        out = _scrubbed(f"error: {text}", url)
        assert "DDDD4444" not in out and "EEEE5555" not in out, out
    b64 = "http://usr:c2VjcmV0S0VZ_FFFF6666==@127.0.0.1:18555/v1"  # a base64 password
    for text in (str(httpx.URL(b64)), "c2VjcmV0S0VZ_FFFF6666%3d%3d"):
        assert "FFFF6666" not in _scrubbed(text, b64)


@pytest.mark.parametrize("char", ["/", "?", "#", "?k=", "@"])
def test_a_slash_question_mark_or_hash_in_a_url_password_is_hidden(char: str) -> None:
    from veeksha.shared.redact import redact_url, url_for_message

    url = f"http://u:pa{char}ss_NNNN7777@127.0.0.1:18555/v1?x=1"
    assert url_for_message(url) == f"http://{REDACTED}@127.0.0.1:18555/v1?{REDACTED}"
    assert redact_url(url) == f"http://{REDACTED}@127.0.0.1:18555/v1?x=1"
    out = _scrubbed(f"bad password pa{char}ss_NNNN7777 in {url}", url)
    assert "NNNN7777" not in out and "pa" + char not in out, out


def test_an_at_sign_in_a_url_path_keeps_the_host_readable() -> None:
    from veeksha.shared.redact import redact_url, url_for_message

    url = "https://h.example/v1/models/claude@20240620:rawPredict"  # no user-info
    assert redact_url(url) == url and url_for_message(url) == url and secret_values(url) == []
    url = (
        "https://api.example.com/v1/models/gpt@latest/chat"  # a host follows the `@`, but a path leads to it
    )
    assert redact_url(url) == url and url_for_message(url) == url and secret_values(url) == []
    url = "https://h.example/v1?user=a@b.com"  # an address in a query value: no user-info either
    assert redact_url(url) == url and url_for_message(url) == f"https://h.example/v1?{REDACTED}"
    assert secret_values(url) == []


def test_a_secret_echoed_escaped_or_in_another_case_is_scrubbed() -> None:
    import base64
    import html
    import json

    secret = 'sk/é<&"_BBBB2222'
    tree = {"api_key": secret}
    for text in (
        json.dumps({"error": secret}),  # \u00e9, \"
        json.dumps({"error": secret}).replace("/", "\\/"),  # JSON with escaped slashes
        json.dumps({"error": secret}, ensure_ascii=False),
        html.escape(secret),
        html.escape(secret, quote=False),
        secret.upper(),
    ):
        assert "BBBB2222" not in _scrubbed(text, tree).upper(), text
    bearer = {"headers": {"Authorization": "Bearer SKAPIKEY_AAAA1111"}}
    assert "aaaa1111" not in _scrubbed("got bearer skapikey_aaaa1111", bearer)
    basic = {"headers": {"Authorization": "Basic " + base64.b64encode(b"alice:CCCC3333pw").decode()}}
    out = _scrubbed("user alice:CCCC3333pw; password CCCC3333pw", basic)
    assert "CCCC3333" not in out, out


def test_a_short_secret_is_scrubbed_only_as_written() -> None:
    from veeksha.shared.redact import scrub_text

    # A server.env value such as INFO is a secret too, but blanking `info` in any case would take
    # ordinary words out of every message.
    out = scrub_text("level INFO: more info at /info", ["INFO"])
    assert out == "level <redacted>: more info at /info"


def test_a_short_secret_is_not_scrubbed_from_text() -> None:
    from veeksha.shared.redact import scrub_text

    assert scrub_text("abc ABC", ["abc"]) == "abc ABC"  # 3 characters: would eat ordinary words


@pytest.mark.parametrize(
    "script",
    [
        "export VLLM_API_KEY=VK_GGGG7777; exec python3 server.py",
        "VLLM_API_KEY=VK_GGGG7777&&exec python3 server.py",
        "export VLLM_API_KEY=VK_GGGG7777|| true",
        "export VLLM_API_KEY=VK_GGGG7777\nexec python3 server.py",
        "vllm serve M --api-key VK_GGGG7777&",
    ],
)
def test_a_secret_in_a_shell_script_is_found_without_its_separator(script: str) -> None:
    command = ["sh", "-c", script]
    assert "VK_GGGG7777" in secret_values({"command": command})
    assert "GGGG7777" not in str(redact({"command": command}))


def test_camel_case_and_short_secret_flag_names_are_secret() -> None:
    flags = ["--authToken", "--accessKey", "--passwd", "--auth", "--key", "--pw", "--ngrok-authtoken"]
    command = ["srv", *[x for i, f in enumerate(flags) for x in (f, f"ZZZZ{i}000")], "--hfToken=ZZZZ9000"]
    shown = str(redact({"command": command}))
    assert "ZZZZ" not in shown and "--authToken" in shown
    assert len(secret_values({"command": command})) == len(flags) + 1
    params = {"additional_sampling_params": {"authToken": "ZZZZ8000", "topP": 1}}
    assert redact(params) == {"additional_sampling_params": {"authToken": REDACTED, "topP": 1}}
    for key in ("subscriptionKey", "APIKey", "hfToken", "api_key_2", "ssl_keyfile_password", "jwt"):
        assert is_secret_key(key), key


# Common vLLM / SGLang / TGI flags: their values are what a reader of config.yml needs.
PLAIN_SERVER_FLAGS = [
    *("-p", "--port", "--host", "--model", "--model-path", "--model-id", "--tokenizer"),
    *("--tokenizer-mode", "--tokenizer-path", "--max-model-len", "--served-model-name"),
    *("--kv-cache-dtype", "--dtype", "--max-num-batched-tokens", "--max-total-tokens"),
    *("--max-input-tokens", "--max-batch-prefill-tokens", "--num-speculative-tokens"),
    *("--tensor-parallel-size", "--tp-size", "--gpu-memory-utilization", "--mem-fraction-static"),
    *("--chat-template", "--revision", "--tokenizer-revision", "--quantization", "--load-format"),
    *("--download-dir", "--seed", "--block-size", "--swap-space", "--max-num-seqs"),
    *("--enable-prefix-caching", "--skip-tokenizer-init", "--long-prefill-token-threshold"),
    *("--key-value-cache-size", "--kv-transfer-config", "--ssl-certfile", "--allowed-headers"),
    *("--tool-call-parser", "--reasoning-parser", "--speculative-config", "--passes"),
    *("--bypass-cache", "--authority", "--keep-alive", "--max-tokens", "--num-tokens", "--max-new-tokens"),
]
# (`--keys` and `--tokens` are not here: a plural flag takes secrets, `--api-keys K1 K2` as LMDeploy's;
# tests/shared/test_redact_known_values.py.)


def test_common_non_secret_server_flags_stay_readable() -> None:
    command = ["srv", *[x for f in PLAIN_SERVER_FLAGS for x in (f, "v1")], "--model=m", "--port=8000"]
    assert redact({"command": command}) == {"command": command}
    assert secret_values({"command": command}) == []


def test_camel_case_and_signed_url_query_keys_are_secret() -> None:
    from veeksha.shared.redact import redact_url

    url = "http://h/v1?subscriptionKey=YYYY1111aa&accessKey=YYYY2222bb&jwt=YYYY3333cc&sig=YYYY4444dd"
    assert "YYYY" not in redact_url(url)
    assert len(secret_values(url)) == 4
    plain = "http://h/v1?api-version=2024&monkey=1&keyword=x&tokens=5"
    assert redact_url(plain) == plain


def test_credential_looking_headers_are_secret_and_ordinary_ones_readable() -> None:
    secret = {"X-Pass": "hunter2!TTTT1111@x", "X-Tenant-Pw": "Tt#TTTT2222!zz", "X-Tok": "RRRR5555tok"}
    shaped = {"X-Custom": "hunter2!TTTT3333@x%^&*"}  # no name hint: 16+ characters with punctuation
    plain = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "User-Agent": "python-requests/2.31.0",
        "X-Request-Id": "123e4567-e89b-12d3-a456-426614174000",
        "X-Correlation-Id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "Cache-Control": "max-age=0, no-cache",
        "X-Priority": "high",
        "X-Bypass": "1",
    }
    headers = {**secret, **shaped, **plain}
    assert redact({"headers": headers})["headers"] == {
        **plain,
        **{k: REDACTED for k in [*secret, *shaped]},
    }
    found = secret_values({"headers": headers})
    assert not set(plain.values()) & set(found)
    assert "TTTT" not in _scrubbed(str(headers), {"headers": headers})


def test_the_working_directory_is_not_a_secret_of_the_environment() -> None:
    from veeksha.shared.redact import environment_secrets

    # `PWD` ends in a word that names a password elsewhere (`--pwd`): every path under the working
    # directory was scrubbed from messages and logs.
    env = {"PWD": "/home/alice/bench", "OLDPWD": "/home/alice", "HF_TOKEN": "hf_abcdefgh1234"}
    assert environment_secrets(env) == ["hf_abcdefgh1234"]


def test_a_secret_of_several_lines_hides_only_itself_whole() -> None:
    """A multi-line server.env value (a logging config, a YAML document) is one secret: its lines are
    ordinary words elsewhere (a model name, `handlers:`), which config.yml and logs keep. A dying
    server's last lines are scrubbed before they are cut (server_launcher._tail), so a multi-line
    key is still found whole there."""
    from veeksha.shared.redact import scrub_list, scrub_text

    value = "model:\n  meta-llama/Llama-3.1-8B\nhandlers:\n  console: ready\n"
    secrets = scrub_list([value])
    said = "serving meta-llama/Llama-3.1-8B; handlers: console: ready"
    assert scrub_text(said, secrets) == said
    assert scrub_text(f"env: {value}done", secrets) == "env: <redacted>done"
