"""Where a run goes, as the user can see it before uploading: the config's field descriptions say which
WANDB_* variable overrides each field (config.yml < environment < flags), and `--dry-run` names the
resolved project and entity."""

from __future__ import annotations

from pathlib import Path

import pytest
from veeksha.shared.config import WandbConfig
from veeksha.shared.schema import json_schema
from veeksha.uploader.settings import env_layer

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import Home, lines_for, upload

# A value each variable accepts, to find the field it sets (env_layer is what the uploader reads).
ENV_VALUES = {
    "WANDB_PROJECT": "p",
    "WANDB_ENTITY": "e",
    "WANDB_RUN_GROUP": "g",
    "WANDB_TAGS": "t",
    "WANDB_NOTES": "n",
    "WANDB_NAME": "r",
    "WANDB_MODE": "offline",
    "WANDB_DISABLED": "true",
}


def _fields_set_by(variable: str) -> list[str]:
    layer = env_layer({variable: ENV_VALUES[variable]})
    return [name for name in json_schema(WandbConfig)["properties"] if getattr(layer, name, None) is not None]


@pytest.mark.parametrize("variable", sorted(ENV_VALUES))
def test_each_field_an_environment_variable_overrides_says_so(variable: str) -> None:
    fields = _fields_set_by(variable)
    assert fields, f"{variable} sets no field of the wandb section"
    properties = json_schema(WandbConfig)["properties"]
    for name in fields:
        description = properties[name].get("description", "")
        overridden = description.partition("overridden by env ")[2]
        assert variable in overridden, (name, description)
        assert "else" not in description  # not a fallback: the variable beats the config


def dry_run_detail(stdout: str) -> str:
    [line] = lines_for(stdout, "would upload")
    return line


def test_a_dry_run_names_the_project_the_environment_chose_over_the_config(
    tmp_path: Path, home: Home
) -> None:
    run_dir = build_run(tmp_path, RunSpec(seed=71, wandb={"project": "cfg-project"}))
    args = [str(run_dir), "--mode", "offline", "--dry-run"]

    from_config = upload(args, home, cwd=tmp_path)
    assert from_config.returncode == 0, from_config.stdout + from_config.stderr
    assert " project='cfg-project' " in dry_run_detail(from_config.stdout)
    assert "entity=" not in dry_run_detail(from_config.stdout)  # not known: offline, none named

    env = {"WANDB_PROJECT": "env-project", "WANDB_ENTITY": "team-x"}
    from_env = upload(args, home, cwd=tmp_path, env=env)
    assert from_env.returncode == 0, from_env.stdout + from_env.stderr
    assert " project='env-project' entity='team-x' " in dry_run_detail(from_env.stdout)

    from_flag = upload([*args, "--project", "flag-project"], home, cwd=tmp_path, env=env)
    assert " project='flag-project' entity='team-x' " in dry_run_detail(from_flag.stdout)


def test_a_dry_run_names_the_default_project(tmp_path: Path, home: Home) -> None:
    run_dir = build_run(tmp_path, RunSpec(seed=72))
    result = upload([str(run_dir), "--mode", "offline", "--dry-run"], home, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    detail = dry_run_detail(result.stdout)
    assert f" project='veeksha' name={run_dir.name!r} group=None tags=[]" in detail, detail
