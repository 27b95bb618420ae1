"""`wandb: {enabled: true}` with W&B disabled (wandb.mode: disabled, or the environment's WANDB_MODE /
WANDB_DISABLED, resolved as the uploader resolves them): the run says W&B is disabled and starts no
uploader. It said "uploading to W&B: ..." and the uploader then skipped the run. Real `veeksha-run`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runner.helpers import run_cli

CONFIG = """
output_dir: out
server: {type: simulated}
runtime: {max_sessions: 2}
wandb: {enabled: true, mode: MODE}
"""


@pytest.mark.parametrize(
    ("mode", "env", "why"),
    [
        ("disabled", {}, "wandb.mode: disabled"),
        ("offline", {"WANDB_DISABLED": "true"}, "WANDB_DISABLED"),
        ("online", {"WANDB_MODE": "disabled"}, "WANDB_MODE=disabled"),
    ],
    ids=["config", "wandb-disabled", "wandb-mode"],
)
def test_a_run_with_wandb_disabled_says_so_and_starts_no_uploader(
    tmp_path: Path, mode: str, env: dict[str, str], why: str
) -> None:
    (tmp_path / "c.veeksha.yml").write_text(CONFIG.replace("MODE", mode))
    proc = run_cli(
        ["--config", "c.veeksha.yml"],
        cwd=tmp_path,
        env={"WANDB_MODE": "", "WANDB_DISABLED": "", **env},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"veeksha: W&B disabled ({why}): not uploading" in proc.stdout.splitlines()
    said = proc.stdout + proc.stderr
    assert "uploading to W&B" not in said
    assert "veeksha-upload:" not in said and "W&B mode is 'disabled'" not in said  # the uploader's skip


SWEEP = """
output_dir: out
server: {type: simulated}
runtime: {max_sessions: !expand [1, 2]}
wandb: {enabled: true, mode: disabled}
"""


def test_a_sweep_with_wandb_disabled_starts_no_uploader_for_its_summary(tmp_path: Path) -> None:
    """The sweep's summary upload reads the same config as its runs: it said "starting the W&B
    uploader" and the uploader then skipped the sweep."""
    (tmp_path / "s.veeksha.yml").write_text(SWEEP)
    proc = run_cli(
        ["--config", "s.veeksha.yml"], cwd=tmp_path, env={"WANDB_MODE": "", "WANDB_DISABLED": ""}, timeout=180
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = proc.stdout + proc.stderr
    disabled = "veeksha: W&B disabled (wandb.mode: disabled): not uploading"
    assert said.count(disabled) == 3  # each of the two runs, then the sweep
    assert "starting the W&B uploader" not in said
    assert "W&B mode is 'disabled'" not in said  # the uploader's skip
