"""shared/userpath.py: `~` and `~user` expanded as the shell would, one line for a user with no home."""

from __future__ import annotations

from pathlib import Path

import pytest
from veeksha.shared.errors import ConfigError, UsageError
from veeksha.shared.userpath import expand_home


def test_a_home_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert expand_home("~/runs", "PATH") == tmp_path / "runs"
    assert expand_home("runs/~x", "PATH") == Path("runs/~x")  # only a leading ~ is a home


def test_an_unknown_user_is_one_line_naming_the_flag_or_key() -> None:
    with pytest.raises(UsageError) as refused:
        expand_home("~nouser-x9/runs", "--follow")
    assert type(refused.value) is UsageError
    assert str(refused.value) == (
        "--follow: '~nouser-x9/runs' starts with ~, but nouser-x9 has no home directory on this machine; "
        "give the full path"
    )


def test_the_caller_chooses_the_error_type() -> None:
    with pytest.raises(ConfigError, match=r"^config error at client\.tokenizer: '~nouser-x9' starts with ~"):
        expand_home("~nouser-x9", "config error at client.tokenizer", ConfigError)
