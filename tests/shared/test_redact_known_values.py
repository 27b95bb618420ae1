"""Plural secret flags (`--api-keys`, LMDeploy's and FastChat's) and the run's known secret values:
config.yml, its hash and sweep labels hold neither, wherever a value sits in the config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from veeksha.shared.config_loader import (
    build_benchmark_config,
    config_sha256,
    dump_config_yaml,
    load_benchmark_runs,
    load_written_config,
    redacted_dict,
)
from veeksha.shared.redact import REDACTED, is_secret_key, redact, redact_argv, secret_values

KEY = "sk-CANARY-known-0001"


@pytest.mark.parametrize(
    ("command", "secrets"),
    [
        # LMDeploy: `--api-keys K1 K2` (several values); FastChat: `--api-keys K1,K2`.
        (
            [
                "lmdeploy",
                "serve",
                "api_server",
                "m",
                "--api-keys",
                "sk-AAAA1",
                "sk-BBBB2",
                "--server-port",
                "1",
            ],
            2,
        ),
        (["python3", "-m", "fastchat.serve.openai_api_server", "--api-keys", "sk-AAAA1,sk-BBBB2"], 1),
        (["srv", "--api-keys=sk-AAAA1", "--auth-tokens", "tok-BBBB2", "--secrets", "s-CCCC3"], 3),
        (["srv", "--passwords", "pw-DDDD4", "--apiKeys", "k-EEEE5", "--hf-tokens", "hf-FFFF6"], 3),
        (["env", "API_KEYS=sk-AAAA1", "HF_TOKENS=hf-BBBB2", "srv"], 2),
        (["sh", "-c", "exec srv --api-keys sk-AAAA1 sk-BBBB2; echo done"], 2),
    ],
)
def test_plural_secret_flags_and_assignments_lose_every_value(command: list[str], secrets: int) -> None:
    shown = redact({"command": command})["command"]
    assert not any(part in str(shown) for part in ("AAAA", "BBBB", "CCCC", "DDDD", "EEEE", "FFFF"))
    assert len(secret_values({"command": command})) >= secrets
    argv = ["veeksha-run", "--server.command", yaml.safe_dump(command, default_flow_style=True)]
    assert "AAAA" not in str(redact_argv(argv)) and "DDDD" not in str(redact_argv(argv))


def test_a_plural_flag_without_values_hides_nothing_after_it() -> None:
    command = ["srv", "--api-keys", "--port", "8000", "--model", "m"]
    assert redact({"command": command})["command"] == command


def test_plural_names_that_count_stay_readable() -> None:
    command = [
        *("srv", "--max-tokens", "512", "--num-tokens", "5", "--max_tokens_param", "max_tokens"),
        *("--max-num-batched-tokens", "8192", "--max-new-tokens=64", "MAX_TOKENS=512", "--n-tokens", "3"),
    ]
    assert redact({"command": command})["command"] == command
    assert secret_values({"command": command}) == []
    # Config keys are judged by the singular words only: `tokens` and `keys` name no secret there.
    tree = {"max_tokens": 5, "num_tokens": 6, "tokens": 7, "keys": ["a"], "max_tokens_param": "max_tokens"}
    assert redact(tree) == tree
    assert not is_secret_key("tokens") and not is_secret_key("api_keys_count")


def command_config(command: list[str], **extra: object) -> dict[str, object]:
    server = {"type": "command", "command": command, "ready_url": "http://127.0.0.1:18094/health"}
    return {"client": {"model": "m", "api_key": KEY, **extra}, "server": server}


def test_the_api_key_is_hidden_wherever_it_appears_in_config_yml() -> None:
    """`--api-keys` aside, the client's key given to the server under any flag (or inside a script,
    a URL, the model name) is a known secret of the run: config.yml never shows it."""
    command = ["srv", "--served-key-list", KEY, "--url", f"http://h/{KEY}/v1", f"--note=key is {KEY}"]
    cfg = build_benchmark_config(command_config(command))

    text = dump_config_yaml(cfg)

    assert KEY not in text and "CANARY" not in text
    written = yaml.safe_load(text)
    assert written["client"]["api_key"] == REDACTED
    assert written["server"]["command"] == [
        "srv",
        "--served-key-list",
        REDACTED,
        "--url",
        f"http://h/{REDACTED}/v1",
        f"--note=key is {REDACTED}",
    ]


def test_header_url_and_server_env_secrets_are_hidden_elsewhere_in_the_config() -> None:
    header = "hdr-CANARY-0002-abcdef"
    password = "pw-CANARY-0003"
    env_value = "env-CANARY-0004-long"
    command = ["srv", "--upstream-auth", header, "--proxy", password, "--svc", env_value, "--port", "8000"]
    tree = command_config(command, headers={"X-Upstream": header})
    tree["client"]["api_base"] = f"http://user:{password}@127.0.0.1:18094/v1"  # type: ignore[index]
    tree["server"]["env"] = {"SERVICE_CRED": env_value, "LOG_LEVEL": "INFO"}  # type: ignore[index]
    cfg = build_benchmark_config(tree)

    text = dump_config_yaml(cfg)

    assert "CANARY" not in text
    server = redacted_dict(cfg)["server"]
    assert server["command"][-2:] == ["--port", "8000"]  # ordinary values stay readable
    assert server["env"] == {"SERVICE_CRED": REDACTED, "LOG_LEVEL": REDACTED}  # every server.env value


def test_config_yml_still_reads_back_and_its_hash_is_over_what_it_shows() -> None:
    import hashlib

    import orjson

    cfg = build_benchmark_config(command_config(["srv", "--served-key-list", KEY]))
    shown = redacted_dict(cfg)
    assert config_sha256(cfg) == hashlib.sha256(orjson.dumps(shown, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert KEY not in orjson.dumps(shown).decode()


def test_a_written_config_with_hidden_values_reads_back(tmp_path: Path) -> None:
    cfg = build_benchmark_config(command_config(["srv", "--served-key-list", KEY]))
    (tmp_path / "config.yml").write_text(dump_config_yaml(cfg))
    back = load_written_config(tmp_path / "config.yml")
    assert back.server is not None and back.server.command[-1] == REDACTED  # type: ignore[union-attr]


def test_short_server_env_values_do_not_blank_the_rest_of_the_config() -> None:
    """A port or a mode in server.env (secret by position, not by name) would otherwise take the
    ready_url's port or wandb.mode with it, and config.yml would no longer read back."""
    tree = command_config(["srv", "--port", "8000"])
    tree["server"]["env"] = {"PORT": "8000", "WANDB_MODE": "offline"}  # type: ignore[index]
    tree["wandb"] = {"mode": "offline"}
    cfg = build_benchmark_config(tree)
    shown = redacted_dict(cfg)
    assert shown["server"]["ready_url"] == "http://127.0.0.1:18094/health"
    assert shown["server"]["command"] == ["srv", "--port", "8000"]
    assert shown["wandb"]["mode"] == "offline"


def test_wandb_notes_and_tags_shaped_like_credentials_are_hidden() -> None:
    tree = command_config(["srv"])
    tree["wandb"] = {
        "notes": "Bearer sk-CANARY0Dnotes123",
        "tags": ["token sk-CANARY9Atag1", "nightly"],
        "group": "Token throughput",  # prose: no credential
    }
    shown = redacted_dict(build_benchmark_config(tree))
    assert shown["wandb"]["notes"] == REDACTED
    assert shown["wandb"]["tags"] == [REDACTED, "nightly"]
    assert shown["wandb"]["group"] == "Token throughput"


def test_a_sweep_over_plural_flag_values_labels_its_runs_without_them(tmp_path: Path) -> None:
    config = tmp_path / "c.veeksha.yml"
    config.write_text(
        "client: {model: m}\n"
        "server: {type: command, ready_url: 'http://127.0.0.1:1/health',"
        " command: [python3, s.py, '18094', --api-keys, !expand [sk-CANARY-A1, sk-CANARY-B2]]}\n"
    )
    runs = load_benchmark_runs(config, [])
    assert [r.params for r in runs] == [{"server.command.4": REDACTED}] * 2


def test_a_sweep_value_equal_to_the_api_key_is_hidden_under_any_flag(tmp_path: Path) -> None:
    config = tmp_path / "c.veeksha.yml"
    config.write_text(
        f"client: {{model: m, api_key: {KEY}}}\n"
        "server: {type: command, ready_url: 'http://127.0.0.1:1/health',"
        f" command: [srv, --served-key-list, !expand [{KEY}, other-value]]}}\n"
    )
    runs = load_benchmark_runs(config, [])
    assert [r.params for r in runs] == [{"server.command.2": REDACTED}, {"server.command.2": "other-value"}]


def test_a_short_placeholder_key_does_not_rewrite_the_rest_of_config_yml() -> None:
    """`api_key: test` (vLLM's docs use `EMPTY`, `token-abc123`) is no credential to hunt for: the
    model `test-model` keeps its name in config.yml and on W&B; the key itself is still hidden."""
    cfg = build_benchmark_config({"client": {"model": "test-model", "api_key": "test"}})
    written = redacted_dict(cfg)
    assert written["client"]["model"] == "test-model"
    assert written["client"]["api_key"] == REDACTED
