"""`veeksha-upload --sync PATH...`: publishing offline uploads that were moved or copied from an
air-gapped host, from any working directory (issue 8 §4).

Real processes, the real SDK offline on the "air-gapped" side and online against the loopback fake
W&B server on the connected side.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from veeksha.uploader.reader import allowed_files

from tests.uploader.builders import RunSpec, build_run, build_sweep
from tests.uploader.conftest import Home, lines_for, local_run_folders, online_env, read_marker_json, upload
from tests.uploader.fake_wandb import FakeWandb


def test_sync_publishes_a_moved_run_with_every_artifact_file_and_its_settings(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    airgap = tmp_path / "airgap"
    run_dir = build_run(airgap, RunSpec(seed=21, seconds=3))
    args = [str(run_dir), "--mode", "offline", "--project", "lab", "--tag", "h100", "--run-name", "first"]
    offline = upload(args, home, cwd=airgap)
    assert lines_for(offline.stdout, "uploaded"), offline.stdout + offline.stderr
    run_id = read_marker_json(run_dir)["run_id"]

    connected = tmp_path / "connected" / "copied"
    shutil.copytree(airgap, connected)
    shutil.rmtree(airgap)  # nothing of the original location is left to find files in
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    published = upload(["--sync", str(connected)], home, cwd=elsewhere, env=online_env(fake_wandb))
    assert published.returncode == 0 and lines_for(published.stdout, "uploaded"), (
        published.stdout + published.stderr
    )

    moved = connected / run_dir.name
    run = fake_wandb.run(run_id, project="lab")  # the offline run's id, project, tags and name
    assert run.tags == ["h100"] and run.name == "first" and run.state == "finished"
    [art] = [a for a in run.artifacts if a.type == "veeksha-run"]
    assert art.state == "COMMITTED" and sorted(art.files) == allowed_files(moved) and not art.missing()
    marker = read_marker_json(moved)
    assert marker["mode"] == "online" and marker["run_id"] == run_id and run_id in marker["url"]
    assert not [f for f in local_run_folders(moved) if f.startswith("offline-run-")]

    again = upload(["--sync", str(connected)], home, cwd=elsewhere, env=online_env(fake_wandb))
    assert "already published online" in again.stdout and fake_wandb.created == 1


def test_sync_publishes_a_copied_sweep_tree(tmp_path: Path, home: Home, fake_wandb: FakeWandb) -> None:
    sweep = build_sweep(tmp_path / "airgap")
    offline = upload([str(sweep), "--mode", "offline"], home, cwd=tmp_path)
    assert len(lines_for(offline.stdout, "uploaded")) == 3, offline.stdout + offline.stderr
    copy = tmp_path / "connected"
    shutil.copytree(tmp_path / "airgap", copy)

    published = upload(["--sync", str(copy)], home, cwd=tmp_path, env=online_env(fake_wandb))
    assert published.returncode == 0, published.stdout + published.stderr
    assert len(lines_for(published.stdout, "uploaded")) == 3  # two runs and the sweep summary
    assert fake_wandb.created == 3
    assert all(run.state == "finished" and run.group == sweep.name for run in fake_wandb.runs.values())


def test_sync_skips_directories_without_an_offline_upload(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    run_dir = build_run(tmp_path, RunSpec(seed=22, seconds=2))
    done = upload(["--sync", str(tmp_path)], home, cwd=tmp_path, env=online_env(fake_wandb))
    assert done.returncode == 0 and "no offline upload here" in done.stdout
    assert not (run_dir / "wandb_run.json").exists() and fake_wandb.created == 0
    refused = upload(["--sync", str(tmp_path), "--mode", "offline"], home, cwd=tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
