"""`veeksha-run` with `wandb.enabled` reads the W&B environment as the uploader does (shared/wandb_env.py).

A WANDB_MODE or WANDB_BASE_URL that the upload at the end would refuse stops the run before its
server starts (exit 2, one line, no directory), not after the whole benchmark; the SDK's old spelling
`run` is online, so the live follower starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from veeksha.runner.benchmark import wandb_mode
from veeksha.shared.config import BenchmarkConfig, WandbConfig

from tests.runner.helpers import run_cli

KEY = "sk-wandb-secret-9f8e7d"
ONE_RUN = """
output_dir: out
server: {type: simulated}
runtime: {benchmark_timeout: 2}
wandb: {enabled: true}
"""
A_SWEEP = ONE_RUN.replace("benchmark_timeout: 2", "benchmark_timeout: !expand [2, 3]")


@pytest.mark.parametrize(
    ("config", "env", "message"),
    [
        (ONE_RUN, {"WANDB_MODE": "bogus"}, "WANDB_MODE 'bogus' is not a mode veeksha-upload knows"),
        (ONE_RUN, {"WANDB_MODE": "shared"}, "WANDB_MODE 'shared' is not a mode veeksha-upload knows"),
        (A_SWEEP, {"WANDB_MODE": "bogus"}, "WANDB_MODE 'bogus'"),
        (ONE_RUN, {"WANDB_BASE_URL": "api.wandb.ai"}, "WANDB_BASE_URL 'api.wandb.ai' is not an http(s) URL"),
        (
            ONE_RUN,
            {"WANDB_BASE_URL": f"https://me:{KEY}@wandb.example:badport"},
            "WANDB_BASE_URL 'https://<redacted>@wandb.example:badport' is not an http(s) URL",
        ),
    ],
    ids=["bogus-mode", "shared-mode", "sweep", "no-scheme-url", "url-with-key"],
)
def test_a_bad_wandb_environment_stops_the_run_before_its_server_starts(
    tmp_path: Path, config: str, env: dict[str, str], message: str
) -> None:
    (tmp_path / "c.veeksha.yml").write_text(config)
    result = run_cli(["--config", "c.veeksha.yml"], cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("veeksha-run: ") and message in line, line
    assert "set online, offline or disabled" in line or "fix or unset it" in line
    assert KEY not in result.stdout + result.stderr
    assert result.stdout == "" and not (tmp_path / "out").exists()


def test_the_wandb_environment_is_not_read_when_wandb_is_off(tmp_path: Path) -> None:
    (tmp_path / "c.veeksha.yml").write_text(ONE_RUN.replace("enabled: true", "enabled: false"))
    result = run_cli(["--config", "c.veeksha.yml", "--dry-run"], cwd=tmp_path, env={"WANDB_MODE": "bogus"})
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        ({"WANDB_MODE": "run"}, "online"),  # the SDK's old spelling: the live follower starts
        ({"WANDB_MODE": "dryrun"}, "offline"),
        ({"WANDB_MODE": "online", "WANDB_DISABLED": "true"}, "disabled"),
        ({}, "offline"),  # the config's own mode when the environment says nothing
    ],
)
def test_the_runner_reads_wandb_mode_as_the_uploader_does(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], mode: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = BenchmarkConfig(wandb=WandbConfig(enabled=True, mode="offline"))
    assert wandb_mode(cfg) == mode
