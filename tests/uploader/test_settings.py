"""Settings precedence: config.yml `wandb:` < WANDB_* environment < flags."""

from __future__ import annotations

import re

import pytest
from veeksha.shared.errors import ContractError, UsageError
from veeksha.uploader.settings import DEFAULT_BASE_URL, Layer, config_layer, env_layer, resolve


def test_defaults_when_nothing_is_set() -> None:
    s = resolve(Layer(), Layer(), Layer())
    assert (s.project, s.mode, s.log_artifacts, s.base_url) == ("veeksha", "online", True, DEFAULT_BASE_URL)
    assert s.tags == () and s.entity is None and s.group is None


def test_environment_beats_config_and_flags_beat_both() -> None:
    cfg = config_layer({"project": "cfg", "group": "cfg-g", "tags": ["a"], "mode": "offline"}, "config.yml")
    env = env_layer({"WANDB_PROJECT": "env", "WANDB_TAGS": "x, y", "WANDB_MODE": "online"})
    flags = Layer(project="flag", log_artifacts=False)
    s = resolve(cfg, env, flags)
    assert s.project == "flag"
    assert s.group == "cfg-g"  # only the config set it
    assert s.tags == ("x", "y")  # a higher layer's tags replace, they do not merge
    assert s.mode == "online"
    assert s.log_artifacts is False


def test_environment_spellings() -> None:
    assert env_layer({"WANDB_MODE": "dryrun"}).mode == "offline"
    assert env_layer({"WANDB_MODE": "run"}).mode == "online"  # the SDK's old spelling of online
    assert env_layer({"WANDB_DISABLED": "true"}).mode == "disabled"
    env = env_layer({"WANDB_BASE_URL": "http://127.0.0.1:9/", "WANDB_API_KEY": "key", "WANDB_NAME": "n"})
    s = resolve(env)
    assert s.base_url == "http://127.0.0.1:9" and s.api_key == "key" and s.run_name == "n"


def test_api_key_never_shows_in_repr_or_identity() -> None:
    s = resolve(Layer(api_key="sk-very-secret-key"))
    assert "sk-very-secret-key" not in repr(s)
    assert "sk-very-secret-key" not in str(s.identity())


def test_invalid_wandb_section_names_the_file() -> None:
    with pytest.raises(ContractError, match=r"runs/x/config.yml: .*wandb.mode"):
        config_layer({"mode": "sometimes"}, "runs/x/config.yml")


def test_enabled_false_does_not_stop_an_explicit_upload() -> None:
    s = resolve(config_layer({"enabled": False, "project": "p"}, "config.yml"))
    assert s.project == "p" and s.mode == "online"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"WANDB_MODE": "shared"}, "WANDB_MODE 'shared' is not a mode veeksha-upload knows"),
        ({"WANDB_BASE_URL": "api.wandb.ai"}, "WANDB_BASE_URL 'api.wandb.ai' is not an http(s) URL"),
        ({"WANDB_BASE_URL": "http://host:port"}, "WANDB_BASE_URL 'http://host:port' is not an http(s) URL"),
    ],
)
def test_an_environment_no_upload_could_use_is_a_usage_error(environ: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        env_layer(environ)


def test_a_bad_server_url_in_the_environment_is_shown_without_its_key() -> None:
    with pytest.raises(UsageError) as refused:
        env_layer({"WANDB_BASE_URL": "https://u:sk-secret-key-123@host:badport"})
    assert "sk-secret-key-123" not in str(refused.value)
    assert "'https://<redacted>@host:badport'" in str(refused.value)
