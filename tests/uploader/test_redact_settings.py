"""W&B notes, tags, group and run name shaped like credentials (`Bearer sk-...`, `token sk-...`) reach
W&B as `<redacted>`, whichever layer gave them (config.yml, WANDB_* environment, flags): the rule
the uploader applies to the config tree applies to them too. Read back from the offline run's
record stream, which `--sync` would publish as it is."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from veeksha.shared.redact import REDACTED

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import Home, upload
from tests.uploader.wandb_records import offline_run_dirs, read_offline_run

NOTES = "Bearer sk-CANARY0Dnotes123"
TAG = "token sk-CANARY9Atag1"
GROUP = "Bearer sk-CANARY-group-77"
NAME = "token sk-CANARY-name-88"


def run_with_raw_wandb_section(parent: Path, wandb: dict[str, object]) -> Path:
    """A run directory whose config.yml holds `wandb` as written (an older runner, a hand edit)."""
    root = build_run(parent, RunSpec(seed=7))
    tree = yaml.safe_load((root / "config.yml").read_text())
    tree["wandb"] = {**tree["wandb"], **wandb}
    (root / "config.yml").write_text(yaml.safe_dump(tree, sort_keys=False))
    return root


def everything_recorded(root: Path) -> str:
    files = [p for p in (root / "wandb").rglob("*") if p.is_file()] + [root / "wandb_run.json"]
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in files)


def test_credential_shaped_settings_in_config_yml_reach_w_and_b_redacted(tmp_path: Path, home: Home) -> None:
    wandb = {"notes": NOTES, "tags": [TAG, "nightly"], "group": GROUP, "run_name": NAME}
    root = run_with_raw_wandb_section(tmp_path, wandb)

    result = upload([str(root), "--mode", "offline"], home, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    (sync_dir,) = offline_run_dirs(root)
    run = read_offline_run(sync_dir)
    assert run.run.notes == REDACTED
    assert run.tags == [REDACTED, "nightly"]
    assert run.run.run_group == REDACTED and run.run.display_name == REDACTED
    assert "CANARY" not in everything_recorded(root) + result.stdout + result.stderr


def test_credential_shaped_settings_from_flags_and_environment_reach_w_and_b_redacted(
    tmp_path: Path, home: Home
) -> None:
    root = build_run(tmp_path, RunSpec(seed=8))
    env = {"WANDB_NOTES": NOTES, "WANDB_RUN_GROUP": GROUP}

    result = upload([str(root), "--mode", "offline", "--tag", TAG, "--tag", "nightly"], home, tmp_path, env)

    assert result.returncode == 0, result.stdout + result.stderr
    (sync_dir,) = offline_run_dirs(root)
    run = read_offline_run(sync_dir)
    assert (run.run.notes, run.run.run_group, run.tags) == (REDACTED, REDACTED, [REDACTED, "nightly"])
    assert "CANARY" not in everything_recorded(root) + result.stdout + result.stderr


@pytest.mark.parametrize("json_output", [True, False])
def test_a_dry_run_reports_credential_shaped_tags_redacted(
    tmp_path: Path, home: Home, json_output: bool
) -> None:
    root = run_with_raw_wandb_section(tmp_path, {"tags": [TAG], "notes": NOTES, "group": GROUP})

    args = [str(root), "--mode", "offline", "--dry-run", "--tag", "token sk-CANARY-flag-99"]
    result = upload([*args, *(["--json"] if json_output else [])], home, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert REDACTED in result.stdout and "CANARY" not in result.stdout + result.stderr


def test_prose_notes_and_tags_stay_as_written(tmp_path: Path, home: Home) -> None:
    notes = "Token throughput at 2k context; Basic arithmetic prompts"
    root = run_with_raw_wandb_section(tmp_path, {"notes": notes, "tags": ["token-throughput", "v2"]})

    result = upload([str(root), "--mode", "offline"], home, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    (sync_dir,) = offline_run_dirs(root)
    run = read_offline_run(sync_dir)
    assert run.run.notes == notes and run.tags == ["token-throughput", "v2"]
