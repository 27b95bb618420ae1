"""The W&B run id and "unchanged" do not depend on what is known of the API key's default entity.

Online, the reachability probe says which entity the key's runs go to when none is named; offline,
after a failed probe (`--fallback-offline`) and with `--dry-run` nobody knows. Naming that entity
(`WANDB_ENTITY`) or naming none must give the same W&B run either way, or a re-upload made with less
knowledge missed the "already uploaded, unchanged" skip and a later online upload created a second run.
"""

from __future__ import annotations

import socket
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from veeksha.shared.jsonio import read_json
from veeksha.shared.paths import UPLOAD_PENDING
from veeksha.uploader import groups
from veeksha.uploader.settings import Layer, resolve
from veeksha.uploader.wandb_session import wandb_run_id
from veeksha.uploader.worker import make_plan

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import Home, lines_for, local_run_folders, online_env, read_marker_json, upload
from tests.uploader.fake_wandb import ENTITY, FakeWandb

NAMED = {"WANDB_ENTITY": ENTITY}  # the fake's default entity, named


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plan_id(root: Path, entity: str | None, default_entity: str | None) -> str:
    settings = resolve(Layer(project="p", entity=entity))
    ident = read_json(root / "run.json")["run_id"]
    plan = make_plan(
        root, settings, kind=groups.RUN, ident=ident, name="n", group=None, tags=(), files=[],
        default_entity=default_entity,
    )  # fmt: skip
    return plan.run_id


def test_the_run_id_is_the_same_whatever_is_known_of_the_default_entity(tmp_path: Path) -> None:
    root = build_run(tmp_path, RunSpec(seed=41, seconds=2))
    ids = {
        plan_id(root, entity, default)
        for entity in (None, "alice")
        for default in (None, "alice", "bob")  # offline / the key is alice's / the key is bob's
    }
    assert len(ids) == 1


def test_an_id_an_older_upload_derived_from_the_entity_is_kept(tmp_path: Path) -> None:
    """Uploads before 2026-12 hashed a named entity into the id: their directories keep their run."""
    root = build_run(tmp_path, RunSpec(seed=42, seconds=2))
    older = wandb_run_id("run", read_json(root / "run.json")["run_id"], "p", "alice")
    (root / UPLOAD_PENDING).write_text(older)
    assert plan_id(root, "alice", None) == older == plan_id(root, "alice", "bob")
    assert plan_id(root, None, "alice") == older  # the entity it named was the key's default
    assert plan_id(root, None, None) != older  # another entity: another run


def online(run_dir: Path, home: Home, fake: FakeWandb, env: dict[str, str]) -> CompletedProcess[str]:
    env = {**online_env(fake), **env}
    return upload([str(run_dir), "--mode", "online"], home, cwd=run_dir.parent, env=env)


@pytest.mark.parametrize(
    ("first", "then"),
    [({}, NAMED), (NAMED, NAMED), (NAMED, {})],
    ids=["named-later", "named-both", "named-first"],
)
def test_a_night_with_w_and_b_down_leaves_an_uploaded_run_alone_however_its_entity_is_named(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb, first: dict[str, str], then: dict[str, str]
) -> None:
    run_dir = build_run(tmp_path, RunSpec(seed=43, seconds=2))
    uploaded = online(run_dir, home, fake_wandb, first)
    assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr
    marker = read_marker_json(run_dir)

    down = {"WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}", "WANDB_API_KEY": fake_wandb.api_key}
    night = upload([str(run_dir), "--fallback-offline"], home, cwd=tmp_path, env={**down, **then})
    (line,) = lines_for(night.stdout, "skipped")
    assert "already uploaded to W&B, unchanged" in line, night.stdout + night.stderr
    assert read_marker_json(run_dir) == marker
    assert not [f for f in local_run_folders(run_dir) if f.startswith("offline-run-")]

    offline = upload([str(run_dir), "--mode", "offline"], home, cwd=tmp_path, env=then)
    assert "already uploaded to W&B, unchanged" in offline.stdout, offline.stdout + offline.stderr
    dry = upload([str(run_dir), "--dry-run"], home, cwd=tmp_path, env={**online_env(fake_wandb), **then})
    assert "already uploaded, unchanged" in dry.stdout, dry.stdout + dry.stderr
    back = online(run_dir, home, fake_wandb, then)
    assert "already uploaded, unchanged" in back.stdout, back.stdout + back.stderr
    assert fake_wandb.created == 1


@pytest.mark.parametrize(("first", "then"), [(NAMED, {}), ({}, NAMED)], ids=["named-offline", "named-online"])
def test_an_offline_upload_and_the_online_one_after_it_make_one_run(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb, first: dict[str, str], then: dict[str, str]
) -> None:
    run_dir = build_run(tmp_path, RunSpec(seed=44, seconds=2))
    offline = upload([str(run_dir), "--mode", "offline"], home, cwd=tmp_path, env=first)
    assert lines_for(offline.stdout, "uploaded"), offline.stdout + offline.stderr
    run_id = read_marker_json(run_dir)["run_id"]

    published = online(run_dir, home, fake_wandb, then)
    assert lines_for(published.stdout, "uploaded"), published.stdout + published.stderr
    assert read_marker_json(run_dir)["run_id"] == run_id and fake_wandb.run(run_id).state == "finished"
    again = online(run_dir, home, fake_wandb, first)
    assert "already uploaded, unchanged" in again.stdout, again.stdout + again.stderr
    assert fake_wandb.created == 1


def test_a_run_an_older_upload_hashed_its_named_entity_into_is_found_without_the_marker(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    """Uploaded with `--entity team` before ids stopped hashing the entity, then the marker was lost
    (an rsync taken before the upload finished): the server's run under the older id is this one."""
    run_dir = build_run(tmp_path, RunSpec(seed=47, seconds=2))
    team = {"WANDB_ENTITY": "team"}
    first = online(run_dir, home, fake_wandb, team)
    assert lines_for(first.stdout, "uploaded"), first.stdout + first.stderr
    # Make the server's run the one the old code created: the id hashed with the named entity.
    marker = read_marker_json(run_dir)
    run = fake_wandb.run(marker["run_id"])
    older = wandb_run_id("run", read_json(run_dir / "run.json")["run_id"], run.project, "team")
    assert older != run.run_id
    del fake_wandb.runs[(run.entity, run.project, run.run_id)]
    run.run_id = older
    fake_wandb.runs[(run.entity, run.project, older)] = run
    (run_dir / "wandb_run.json").unlink()

    again = online(run_dir, home, fake_wandb, team)
    (line,) = lines_for(again.stdout, "skipped")
    assert "uploaded from elsewhere" in line, again.stdout + again.stderr
    assert fake_wandb.created == 1
