"""Black-box review findings: half-finished runs, unfinished syncs, the raw `wandb sync` hint, copied
directories and the default entity (real processes, the real SDK, the loopback fake W&B server)."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from veeksha.shared.paths import UPLOAD_PENDING

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import Home, lines_for, local_run_folders, online_env, read_marker_json, upload
from tests.uploader.fake_wandb import ENTITY, FakeWandb


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def online(run_dir: Path, home: Home, fake: FakeWandb, *args: str, env: dict[str, str] | None = None):
    return upload(
        [str(run_dir), "--mode", "online", *args],
        home,
        cwd=run_dir.parent,
        env={**online_env(fake), **(env or {})},
    )


def test_a_half_finished_online_run_is_not_taken_for_the_published_offline_copy(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    run_dir = build_run(tmp_path, RunSpec(seed=31, seconds=4))
    first = online(run_dir, home, fake_wandb)
    assert first.returncode == 0, first.stdout + first.stderr
    run_id = read_marker_json(run_dir)["run_id"]
    run = fake_wandb.run(run_id)
    full_rows, full_summary = len(run.history), len(run.summary)
    # Night 1 as a failed upload leaves it: part of the history, no end, pending file, no marker.
    del run.history[5:]
    run.state, run.summary = "running", {}
    (run_dir / "wandb_run.json").unlink()
    (run_dir / UPLOAD_PENDING).write_text(run_id)

    down = {"WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}", "WANDB_API_KEY": fake_wandb.api_key}
    night2 = upload([str(run_dir), "--fallback-offline"], home, cwd=tmp_path, env=down)
    assert lines_for(night2.stdout, "uploaded"), night2.stdout + night2.stderr
    assert "wandb sync wandb/" not in night2.stdout  # that run id is on W&B already: only --sync rewinds it

    night3 = online(run_dir, home, fake_wandb)
    assert lines_for(night3.stdout, "uploaded"), night3.stdout + night3.stderr
    run = fake_wandb.run(run_id)
    assert run.state == "finished" and len(run.history) == full_rows and len(run.summary) == full_summary
    assert read_marker_json(run_dir)["mode"] == "online" and fake_wandb.created == 1


@pytest.mark.parametrize("retry", ["sync", "plain"])
def test_an_unfinished_sync_can_be_retried(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb, retry: str
) -> None:
    run_dir = build_run(tmp_path, RunSpec(seed=32, seconds=3))
    offline = upload(
        [str(run_dir), "--mode", "offline", "--project", "sfproj", "--tag", "airgap"], home, cwd=tmp_path
    )
    assert lines_for(offline.stdout, "uploaded"), offline.stdout + offline.stderr
    run_id = read_marker_json(run_dir)["run_id"]
    fake_wandb.fail("500", "artifacts")
    failed = upload(
        ["--sync", str(run_dir), "--deadline", "8"], home, cwd=tmp_path, env=online_env(fake_wandb)
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    fake_wandb.heal()

    args = ["--sync", str(run_dir)] if retry == "sync" else [str(run_dir)]
    again = upload(args, home, cwd=tmp_path, env=online_env(fake_wandb))
    assert again.returncode == 0 and lines_for(again.stdout, "uploaded"), again.stdout + again.stderr
    run = fake_wandb.run(run_id, project="sfproj")
    assert run.state == "finished" and run.tags == ["airgap"] and fake_wandb.created == 1
    marker = read_marker_json(run_dir)
    assert marker["mode"] == "online" and marker["run_id"] == run_id


def test_a_published_run_is_not_written_offline_again(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    run_dir = build_run(tmp_path, RunSpec(seed=33, seconds=3))
    offline_env = {"WANDB_MODE": "offline"}
    assert upload([str(run_dir)], home, cwd=tmp_path, env=offline_env).returncode == 0
    synced = upload(["--sync", str(run_dir)], home, cwd=tmp_path, env=online_env(fake_wandb))
    assert synced.returncode == 0, synced.stdout + synced.stderr
    marker = read_marker_json(run_dir)

    nightly = upload(["--recursive", str(tmp_path)], home, cwd=tmp_path, env=offline_env)
    assert nightly.returncode == 0, nightly.stdout + nightly.stderr
    (line,) = lines_for(nightly.stdout, "skipped")
    assert "already uploaded to W&B, unchanged" in line and "wandb sync wandb/" not in nightly.stdout
    assert read_marker_json(run_dir) == marker
    assert not [f for f in local_run_folders(run_dir) if f.startswith("offline-run-")]


def test_a_changed_copy_of_an_uploaded_directory_is_uploaded_from_elsewhere(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    run_dir = build_run(tmp_path / "a", RunSpec(seed=34, seconds=3))
    assert online(run_dir, home, fake_wandb).returncode == 0
    run_id = read_marker_json(run_dir)["run_id"]
    digest = fake_wandb.run(run_id).config["veeksha_upload_digest"]
    copy = tmp_path / "b" / run_dir.name
    shutil.copytree(run_dir, copy, symlinks=True)
    with (copy / "config.yml").open("a") as f:
        f.write("# changed in the copy\n")

    copied = online(copy, home, fake_wandb)
    assert copied.returncode == 0 and "uploaded from elsewhere" in copied.stdout, (
        copied.stdout + copied.stderr
    )
    assert fake_wandb.run(run_id).config["veeksha_upload_digest"] == digest
    original = online(run_dir, home, fake_wandb)
    assert "already uploaded, unchanged" in original.stdout, original.stdout + original.stderr


def test_naming_the_default_entity_targets_the_same_run(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    run_dir = build_run(tmp_path, RunSpec(seed=35, seconds=3))
    assert online(run_dir, home, fake_wandb, "--project", "ent").returncode == 0
    named = online(run_dir, home, fake_wandb, "--project", "ent", env={"WANDB_ENTITY": ENTITY})
    assert named.returncode == 0, named.stdout + named.stderr
    assert fake_wandb.created == 1


@pytest.mark.parametrize("args", [(), ("--fallback-offline",)], ids=["plain", "fallback-offline"])
def test_the_loser_of_two_uploads_creating_one_run_leaves_it_to_the_winner(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb, args: tuple[str, ...]
) -> None:
    """With --fallback-offline too: an offline copy of the winner's run id, written by the loser, made
    the next online upload take that run for its own and rewind it."""
    run_dir = build_run(tmp_path / "a", RunSpec(seed=36, seconds=3))
    assert online(run_dir, home, fake_wandb).returncode == 0
    run_id = read_marker_json(run_dir)["run_id"]
    digest = fake_wandb.run(run_id).config["veeksha_upload_digest"]
    copy = tmp_path / "b" / run_dir.name
    shutil.copytree(run_dir, copy, symlinks=True)
    (copy / "wandb_run.json").unlink()
    shutil.rmtree(copy / "wandb")
    with (copy / "config.yml").open("a") as f:
        f.write("# changed in the copy\n")
    fake_wandb.hide_from_first_lookup(run_id)  # our look-up sees no run; the SDK's init sees it
    lost = online(copy, home, fake_wandb, *args)
    assert lost.returncode == 1 and "created this W&B run meanwhile" in lost.stdout, lost.stdout + lost.stderr
    assert "offline run" not in lost.stdout, lost.stdout
    assert not (copy / UPLOAD_PENDING).exists() and not (copy / "wandb_run.json").exists()
    again = online(copy, home, fake_wandb)
    assert "uploaded from elsewhere" in again.stdout, again.stdout + again.stderr
    assert fake_wandb.run(run_id).config["veeksha_upload_digest"] == digest
    assert fake_wandb.run(run_id).rewinds == 0


def test_an_offline_upload_naming_the_default_entity_is_published_onto_its_own_run(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    run_dir = build_run(tmp_path, RunSpec(seed=37, seconds=3))
    named = {"WANDB_ENTITY": ENTITY}
    assert upload([str(run_dir), "--mode", "offline"], home, cwd=tmp_path, env=named).returncode == 0
    run_id = read_marker_json(run_dir)["run_id"]
    synced = upload(["--sync", str(run_dir)], home, cwd=tmp_path, env=online_env(fake_wandb))
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert read_marker_json(run_dir)["run_id"] == run_id and fake_wandb.run(run_id).state == "finished"


def test_a_password_in_the_w_and_b_url_reaches_no_console_line_and_no_marker(
    tmp_path: Path, fake_wandb: FakeWandb, home: Home
) -> None:
    """A W&B server behind a proxy with basic auth in its URL: the run is uploaded, and neither the
    console (ours and the SDK's) nor wandb_run.json shows the password."""
    run_dir = build_run(tmp_path, RunSpec(seed=11, seconds=2))
    base_url = fake_wandb.base_url.replace("http://", "http://bu:AFAF1111pw@")
    env = {**online_env(fake_wandb), "WANDB_BASE_URL": base_url}

    proc = upload([str(run_dir)], home, cwd=tmp_path, env=env)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines_for(proc.stdout, "uploaded"), proc.stdout
    assert "AFAF1111" not in proc.stdout + proc.stderr
    marker = read_marker_json(run_dir)
    assert marker["mode"] == "online" and "AFAF1111" not in str(marker)
    again = upload([str(run_dir)], home, cwd=tmp_path, env=env)  # the marker still matches its server
    assert "unchanged" in again.stdout, again.stdout
    as_json = upload([str(run_dir), "--force", "--json"], home, cwd=tmp_path, env=env)
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    [result] = json.loads(as_json.stdout)["results"]
    assert result["status"] == "uploaded" and result["url"].endswith(f"/runs/{marker['run_id']}")
    assert "AFAF1111" not in as_json.stdout + as_json.stderr
