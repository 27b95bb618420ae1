"""Uploading a directory whose W&B run the server already has (issue 8 §1).

Every test runs `veeksha-upload` as a real process with the real wandb SDK online against a loopback
fake W&B server that remembers its runs (fake_wandb.py), or offline with the `.wandb` file read back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from veeksha.shared.paths import UPLOAD_PENDING, RunPaths
from veeksha.uploader.reader import allowed_files
from veeksha.uploader.remote import committed_artifact_types

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import (
    Home,
    lines_for,
    local_run_folders,
    online_env,
    read_marker_json,
    upload,
)
from tests.uploader.fake_wandb import API_KEY, ENTITY, FakeArtifact, FakeRun, FakeWandb
from tests.uploader.wandb_records import offline_run_dirs, read_offline_run

WANDB_CLI = str(Path(sys.executable).parent / "wandb")


def rows(run: FakeRun) -> list[dict[str, Any]]:
    """History rows without the SDK's wall-clock keys (they differ between uploads)."""
    return [{k: v for k, v in r.items() if k not in ("_timestamp", "_runtime")} for r in run.history]


def timeseries_rows(run: FakeRun) -> list[dict[str, Any]]:
    return [r for r in rows(run) if "elapsed_s" in r]


def history_shape(run: FakeRun) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """Each row's keys in step order, and the timeseries rows' values (media rows name files that
    carry the artifact version, so their values differ between uploads)."""
    return [sorted(r) for r in rows(run)], timeseries_rows(run)


def online(run_dir: Path, home: Home, fake: FakeWandb, *args: str) -> subprocess.CompletedProcess[str]:
    return upload([str(run_dir), "--mode", "online", *args], home, cwd=run_dir.parent, env=online_env(fake))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return build_run(tmp_path / "runs", RunSpec(seed=5, seconds=4))


def test_new_tag_changed_file_and_force_update_the_same_online_run(
    run_dir: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    first = online(run_dir, home, fake_wandb)
    assert first.returncode == 0, first.stderr
    run_id = read_marker_json(run_dir)["run_id"]
    original = history_shape(fake_wandb.run(run_id))
    assert len(timeseries_rows(fake_wandb.run(run_id))) == 4

    again = online(run_dir, home, fake_wandb)
    assert lines_for(again.stdout, "skipped") and "already uploaded, unchanged" in again.stdout

    retagged = online(run_dir, home, fake_wandb, "--tag", "retagged")
    assert lines_for(retagged.stdout, "uploaded"), retagged.stdout + retagged.stderr
    run = fake_wandb.run(run_id)
    assert run.tags == ["retagged"] and run.rewinds == 1
    assert history_shape(run) == original  # rewound and replayed: no second copy of the history

    stats_path = run_dir / "metrics" / "summary_stats.json"
    stats = json.loads(stats_path.read_text())
    stats["ttfc_p50"] = 123.5
    stats_path.write_text(json.dumps(stats))
    changed = online(run_dir, home, fake_wandb, "--tag", "retagged")
    assert lines_for(changed.stdout, "uploaded"), changed.stdout + changed.stderr
    assert fake_wandb.run(run_id).summary["ttfc_p50"] == 123.5

    forced = online(run_dir, home, fake_wandb, "--tag", "retagged", "--force")
    assert lines_for(forced.stdout, "uploaded"), forced.stdout + forced.stderr
    run = fake_wandb.run(run_id)
    assert fake_wandb.created == 1 and len(fake_wandb.runs) == 1 and run.rewinds == 3
    assert run.state == "finished" and history_shape(run) == original
    assert read_marker_json(run_dir)["run_id"] == run_id
    assert len(local_run_folders(run_dir)) == 1  # the last attempt's local folder only
    assert not (run_dir / UPLOAD_PENDING).exists()


def test_new_tag_offline_replaces_the_offline_run(run_dir: Path, home: Home) -> None:
    for tag in ("one", "two"):
        done = upload([str(run_dir), "--mode", "offline", "--tag", tag], home, cwd=run_dir.parent)
        assert lines_for(done.stdout, "uploaded"), done.stdout + done.stderr
    [folder] = offline_run_dirs(run_dir)
    assert list(read_offline_run(folder).tags) == ["two"]
    assert local_run_folders(run_dir) == [folder.name]


def test_an_upload_to_another_project_replaces_the_offline_run_of_the_first(
    run_dir: Path, home: Home
) -> None:
    """Another project (or entity) is another W&B run id; the directory still holds one upload at a time:
    the first one's offline folder goes (its staged files went with it), so `wandb sync wandb/` publishes
    only the new one, complete."""
    for project in ("first", "other"):
        done = upload([str(run_dir), "--mode", "offline", "--project", project], home, cwd=run_dir.parent)
        assert lines_for(done.stdout, "uploaded"), done.stdout + done.stderr
    [folder] = offline_run_dirs(run_dir)
    run = read_offline_run(folder)
    assert run.run.project == "other" and local_run_folders(run_dir) == [folder.name]
    assert read_marker_json(run_dir)["sync_dir"] == f"wandb/{folder.name}"
    for artifact in run.artifacts:
        for local in artifact.entries.values():
            assert (run_dir / local).is_file(), local


def test_an_online_upload_to_another_project_removes_the_offline_run(
    run_dir: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    offline = upload([str(run_dir), "--mode", "offline", "--project", "first"], home, cwd=run_dir.parent)
    assert lines_for(offline.stdout, "uploaded"), offline.stdout + offline.stderr
    done = online(run_dir, home, fake_wandb, "--project", "other")
    assert lines_for(done.stdout, "uploaded"), done.stdout + done.stderr
    assert offline_run_dirs(run_dir) == []  # nothing left for a `wandb sync wandb/` to publish
    assert read_marker_json(run_dir)["mode"] == "online"


def test_interrupted_online_upload_resumes_onto_its_own_run(
    run_dir: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    fake_wandb.fail("stall", "file_stream")  # the run is created, then its history never lands
    stuck = online(run_dir, home, fake_wandb, "--deadline", "6")
    assert stuck.returncode == 1 and "deadline of 6 s" in stuck.stdout, stuck.stdout + stuck.stderr
    pending = run_dir / UPLOAD_PENDING
    run_id = pending.read_text().strip()
    assert not (run_dir / "wandb_run.json").exists()
    assert fake_wandb.run(run_id).state != "finished"

    fake_wandb.heal()
    resumed = online(run_dir, home, fake_wandb)
    assert lines_for(resumed.stdout, "uploaded"), resumed.stdout + resumed.stderr
    run = fake_wandb.run(run_id)
    assert fake_wandb.created == 1 and run.state == "finished"
    assert [r["_step"] for r in rows(run)] == list(range(len(run.history)))
    assert len(timeseries_rows(run)) == 4
    assert read_marker_json(run_dir)["run_id"] == run_id and not pending.exists()
    assert len(local_run_folders(run_dir)) == 1


def wandb_sync(sync_dir: Path, cwd: Path, home: Home, fake: FakeWandb) -> None:
    done = subprocess.run(
        [WANDB_CLI, "sync", str(sync_dir)],
        cwd=cwd,
        env=home.env({**online_env(fake), "WANDB_ERROR_REPORTING": "false"}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_offline_upload_published_with_wandb_sync_is_recognised(
    run_dir: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    offline = upload([str(run_dir), "--mode", "offline"], home, cwd=run_dir.parent)
    assert lines_for(offline.stdout, "uploaded") and "veeksha-upload --sync" in offline.stdout
    marker = read_marker_json(run_dir)
    wandb_sync(Path(marker["sync_dir"]), run_dir, home, fake_wandb)  # as the printed command does
    upserts = fake_wandb.run(marker["run_id"]).upserts

    nightly = online(run_dir, home, fake_wandb)
    assert "its offline run was published" in nightly.stdout, nightly.stdout + nightly.stderr
    assert read_marker_json(run_dir)["mode"] == "online"
    assert not offline_run_dirs(run_dir)  # syncing it again would append a second copy
    again = online(run_dir, home, fake_wandb)
    assert "already uploaded, unchanged" in again.stdout
    assert fake_wandb.created == 1 and fake_wandb.run(marker["run_id"]).upserts == upserts


def test_a_publish_that_dropped_the_artifact_files_is_uploaded_again(
    run_dir: Path, tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    upload([str(run_dir), "--mode", "offline"], home, cwd=run_dir.parent)
    marker = read_marker_json(run_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    wandb_sync(run_dir / marker["sync_dir"], elsewhere, home, fake_wandb)  # from outside the directory
    [art] = [a for a in fake_wandb.run(marker["run_id"]).artifacts if a.type == "veeksha-run"]
    assert art.state == "PENDING" and not art.files  # what plain `wandb sync` from elsewhere does

    nightly = online(run_dir, home, fake_wandb)
    assert lines_for(nightly.stdout, "uploaded"), nightly.stdout + nightly.stderr
    run = fake_wandb.run(marker["run_id"])
    committed = [a for a in run.artifacts if a.type == "veeksha-run" and a.state == "COMMITTED"]
    assert committed and not committed[-1].missing()
    assert sorted(committed[-1].files) == allowed_files(run_dir)
    assert fake_wandb.created == 1


def test_a_copy_uploaded_from_elsewhere_is_left_alone_unless_forced(
    run_dir: Path, tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    assert online(run_dir, home, fake_wandb).returncode == 0
    copy = tmp_path / "copy" / run_dir.name
    shutil.copytree(run_dir, copy)
    os.remove(copy / "wandb_run.json")
    shutil.rmtree(copy / "wandb")

    left = online(copy, home, fake_wandb)
    assert "uploaded from elsewhere" in left.stdout and left.returncode == 0
    forced = online(copy, home, fake_wandb, "--force")
    assert lines_for(forced.stdout, "uploaded"), forced.stdout + forced.stderr
    assert fake_wandb.created == 1


def test_fallback_offline_leaves_a_run_already_on_w_and_b_alone(run_dir: Path, home: Home) -> None:
    """The nightly `--fallback-offline` backfill on a night W&B is down: directories it uploaded online
    before, unchanged, are not rewritten as offline runs (their online marker stays)."""
    with FakeWandb() as fake:
        first = online(run_dir, home, fake)
        assert first.returncode == 0, first.stdout + first.stderr
        env = online_env(fake)
    marker = read_marker_json(run_dir)
    assert marker["mode"] == "online"

    down = upload([str(run_dir), "--fallback-offline"], home, cwd=run_dir.parent, env=env)

    assert down.returncode == 0, down.stdout + down.stderr
    (line,) = lines_for(down.stdout, "skipped")
    assert "already uploaded to W&B, unchanged" in line
    assert read_marker_json(run_dir) == marker
    assert not [f for f in local_run_folders(run_dir) if f.startswith("offline-run-")]


def test_fallback_offline_says_only_what_happened_to_a_corrupt_directory(
    run_dir: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    """The offline retry of a directory that fails by itself (not W&B) fails too: no claim of an
    offline run written, and the run fails."""
    RunPaths(run_dir).summary_stats.write_text("{not json")

    result = online(run_dir, home, fake_wandb, "--fallback-offline")

    assert result.returncode == 1
    (line,) = lines_for(result.stdout, "failed")
    assert "(the online upload failed the same way)" in line
    assert "offline run instead" not in result.stdout
    assert not (run_dir / "wandb_run.json").exists()


@pytest.mark.parametrize(
    ("scope", "code", "what"),
    [("artifacts", "403", "artifact"), ("file_stream", "400", "history"), ("files", "403", "media files")],
)
def test_a_part_the_sdk_gave_up_on_fails_the_upload_and_the_retry_completes_it(
    run_dir: Path, home: Home, fake_wandb: FakeWandb, scope: str, code: str, what: str
) -> None:
    # The SDK gives up on a 4xx (object storage refusing artifact files or the run's tables, plots and
    # images, file_stream refusing rows), warns, and finishes normally: this was reported "uploaded"
    # and then skipped as unchanged.
    fake_wandb.fail(code, scope)
    first = online(run_dir, home, fake_wandb, "--deadline", "120")
    assert first.returncode == 1 and lines_for(first.stdout, "failed"), first.stdout + first.stderr
    assert "W&B does not have" in first.stdout and what in first.stdout
    assert not (run_dir / "wandb_run.json").exists() and (run_dir / UPLOAD_PENDING).exists()

    fake_wandb.heal()
    retry = online(run_dir, home, fake_wandb)
    assert retry.returncode == 0 and lines_for(retry.stdout, "uploaded"), retry.stdout + retry.stderr
    run = fake_wandb.run(read_marker_json(run_dir)["run_id"])
    assert len(timeseries_rows(run)) == 4
    (artifact,) = [a for a in run.artifacts if a.type == "veeksha-run"][-1:]
    assert artifact.state == "COMMITTED" and not artifact.missing()
    media = [name for name in run.files if name.startswith("media/")]
    assert [n for n in media if n.startswith("media/images/plots/")] and [n for n in media if ".table." in n]


def test_the_committed_artifact_is_found_beyond_the_first_page(fake_wandb: FakeWandb) -> None:
    # Each re-upload adds the run's table artifacts (about 17): after a few, its own artifact sat
    # beyond the first 100 and the run counted as not published.
    run = FakeRun(ENTITY, "proj", "paged")
    run.artifacts = [FakeArtifact(f"t{i}", "run_table", None, "COMMITTED") for i in range(150)]
    run.artifacts.append(FakeArtifact("veeksha-run-paged", "veeksha-run", None, "COMMITTED"))
    fake_wandb.runs[(ENTITY, "proj", "paged")] = run
    types = committed_artifact_types(fake_wandb.base_url, API_KEY, ENTITY, "proj", "paged")
    assert types == {"run_table", "veeksha-run"}


def test_an_older_online_copy_is_not_taken_for_the_published_offline_run(
    run_dir: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    # Online upload; the directory changes and is uploaded offline (W&B was down); W&B is back.
    # The server's run (the first upload) had history and an artifact: it was taken for the
    # published offline run, which was deleted, and the change never reached W&B.
    assert online(run_dir, home, fake_wandb).returncode == 0
    run_id = read_marker_json(run_dir)["run_id"]
    stats_path = run_dir / "metrics" / "summary_stats.json"
    stats = json.loads(stats_path.read_text())
    stats["ttfc_p50"] = 123.5
    stats_path.write_text(json.dumps(stats))
    offline = upload([str(run_dir), "--mode", "offline"], home, cwd=run_dir.parent)
    assert lines_for(offline.stdout, "uploaded"), offline.stdout + offline.stderr

    back = online(run_dir, home, fake_wandb)
    assert lines_for(back.stdout, "uploaded"), back.stdout + back.stderr
    assert fake_wandb.run(run_id).summary["ttfc_p50"] == 123.5
    assert read_marker_json(run_dir)["mode"] == "online" and fake_wandb.created == 1


def test_sync_with_fallback_offline_is_a_usage_error(run_dir: Path, home: Home) -> None:
    # It fell back to rewriting the offline run it was asked to publish and said "skipped", exit 0.
    done = upload(["--sync", "--fallback-offline", str(run_dir)], home, cwd=run_dir.parent)
    assert done.returncode == 2 and "cannot be combined with --fallback-offline" in done.stderr


def test_a_re_upload_whose_new_artifact_the_sdk_gave_up_on_fails(
    run_dir: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    # The check asked for a committed artifact of the type: the first upload's still was, so a
    # changed directory whose new artifact was refused counted as uploaded, and never again.
    assert online(run_dir, home, fake_wandb).returncode == 0
    stats_path = run_dir / "metrics" / "summary_stats.json"
    stats = json.loads(stats_path.read_text())
    stats["ttfc_p50"] = 123.5
    stats_path.write_text(json.dumps(stats))
    fake_wandb.fail("403", "artifacts")
    again = online(run_dir, home, fake_wandb, "--deadline", "120")
    assert again.returncode == 1 and "the veeksha-run artifact's files" in again.stdout, again.stdout
    fake_wandb.heal()
    retry = online(run_dir, home, fake_wandb)
    assert retry.returncode == 0 and lines_for(retry.stdout, "uploaded"), retry.stdout + retry.stderr
