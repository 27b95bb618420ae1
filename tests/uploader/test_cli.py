"""`veeksha-upload`'s mode: the flag beats the environment, which beats config.yml; --help says so."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import Home, lines_for, upload
from tests.uploader.wandb_records import offline_run_dirs

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there


def test_help_states_the_default_mode_and_its_precedence(home: Home, tmp_path: Path) -> None:
    result = upload(["--help"], home, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "--mode > WANDB_MODE > config.yml wandb.mode > online" in text


def test_an_offline_config_is_uploaded_once_and_a_flag_overrides_it(tmp_path: Path, home: Home) -> None:
    """The demo's case: config.yml says `mode: offline` and the runner already uploaded the run."""
    root = build_run(tmp_path, RunSpec(seconds=2, wandb={"enabled": True, "mode": "offline"}))
    first = upload([str(root)], home, cwd=tmp_path)
    assert len(lines_for(first.stdout, "uploaded")) == 1, first.stdout + first.stderr
    before = offline_run_dirs(root)

    again = upload([str(root)], home, cwd=tmp_path)  # no flag: the config's offline mode again
    (skipped,) = lines_for(again.stdout, "skipped")
    assert "already uploaded offline, unchanged" in skipped and "--mode online" in skipped
    assert offline_run_dirs(root) == before  # no second offline run

    env = {"WANDB_API_KEY": "k" * 40}
    online = upload([str(root), "--mode", "online", "--base-url", UNREACHABLE], home, cwd=tmp_path, env=env)
    assert online.returncode == 1 and "unreachable" in online.stderr  # the flag won: it tried online
    assert orjson.loads((root / "wandb_run.json").read_bytes())["mode"] == "offline"  # untouched


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        (
            {"WANDB_MODE": "bogus"},
            [],
            "WANDB_MODE 'bogus' is not a mode veeksha-upload knows: set online, offline or disabled",
        ),
        ({"WANDB_MODE": "bogus"}, ["--dry-run"], "WANDB_MODE 'bogus'"),
        ({"WANDB_MODE": "bogus"}, ["--mode", "offline"], "WANDB_MODE 'bogus'"),  # the SDK reads it too
        ({"WANDB_MODE": "bogus"}, ["--follow"], "WANDB_MODE 'bogus'"),
        ({}, ["--base-url", "notaurl"], "Invalid value for '--base-url': 'notaurl' is not an http(s) URL"),
        ({}, ["--base-url", "ftp://x"], "Invalid value for '--base-url': 'ftp://x' is not an http(s) URL"),
        ({}, ["--base-url", "http://"], "'http://' is not an http(s) URL"),
        (
            {"WANDB_BASE_URL": "notaurl"},
            ["--mode", "offline"],
            "WANDB_BASE_URL 'notaurl' is not an http(s) URL",
        ),
        ({"WANDB_BASE_URL": "ftp://x"}, ["--follow"], "WANDB_BASE_URL 'ftp://x' is not an http(s) URL"),
    ],
)
def test_a_bad_mode_or_server_url_is_a_usage_error_before_anything_is_written(
    tmp_path: Path, home: Home, env: dict[str, str], args: list[str], message: str
) -> None:
    """Exit 2 with one line naming the variable or flag (and what it accepts), not a failure per
    directory after DIR/wandb/ was made, not "would upload ... bogus", not "W&B is unreachable"."""
    root = build_run(tmp_path, RunSpec(seconds=2))
    result = upload([*args, str(root)], home, cwd=tmp_path, env={"WANDB_API_KEY": "k" * 40, **env})
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("veeksha-upload: ") and message in line
    assert result.stdout == "" and not (root / "wandb").exists()


KEY = "wandb-key-5e4d3c2b1a"


@pytest.mark.parametrize(
    ("env", "args", "shown"),
    [
        (
            {"WANDB_BASE_URL": f"https://me:{KEY}@wandb.example:badport"},
            [],
            "WANDB_BASE_URL 'https://<redacted>@wandb.example:badport' is not an http(s) URL",
        ),
        (
            {},
            ["--base-url", f"https://me:{KEY}@wandb.example:badport/x?api_key={KEY}"],
            "'https://<redacted>@wandb.example:badport/x?<redacted>' is not an http(s) URL",
        ),
        ({}, ["--base-url", f"ftp://{KEY}@wandb.example"], "'ftp://<redacted>@wandb.example' is not"),
    ],
    ids=["env", "flag", "flag-token-as-user"],
)
def test_a_bad_server_url_is_refused_without_showing_its_credentials(
    tmp_path: Path, home: Home, env: dict[str, str], args: list[str], shown: str
) -> None:
    root = build_run(tmp_path, RunSpec(seconds=2))
    result = upload([*args, str(root)], home, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert shown in line, line
    assert KEY not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "flag", ["--project", "--entity", "--group", "--tag", "--notes", "--run-name", "--api-key", "--base-url"]
)
def test_an_empty_flag_is_a_usage_error_not_a_setting_cleared(tmp_path: Path, home: Home, flag: str) -> None:
    """`--project "$UNSET"` took the default project over WANDB_PROJECT and the config's, `--api-key ""`
    hid WANDB_API_KEY, `--group ""` cleared the config's group. The environment takes "" as unset and
    the runner refuses an empty flag: so does the uploader, before anything is written."""
    root = build_run(tmp_path, RunSpec(seconds=2, wandb={"project": "cfg-project", "group": "cfg-group"}))
    env = {"WANDB_API_KEY": "k" * 40, "WANDB_PROJECT": "env-project", "WANDB_MODE": "offline"}
    for args in ([flag, ""], [f"{flag}="]):
        result = upload([str(root), *args], home, cwd=tmp_path, env=env)
        assert result.returncode == 2, result.stdout + result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"veeksha-upload: {flag} is empty; give a value or leave the flag out"), line
        assert result.stdout == "" and not (root / "wandb").exists()
