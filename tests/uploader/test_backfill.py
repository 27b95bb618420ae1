"""The cron backfill: --recursive over a tree, skip what is running or done, report, never twice."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import VEEKSHA_UPLOAD, Home, lines_for, upload
from tests.uploader.wandb_records import offline_run_dirs

N = 20

# The tests below share one tree, the later ones building on what the earlier ones uploaded: one
# worker runs them, in order (scripts/test.sh: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("backfill_tree")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 run directories in nested folders: one still running, one with a corrupt metrics file."""
    out = tmp_path_factory.mktemp("tree")
    for i in range(N):
        parent = out / f"team-{i % 3}" / "nightly"
        status = "running" if i == 7 else "completed"
        build_run(parent, RunSpec(seed=i, status=status, seconds=3))
    corrupt = sorted((out / "team-1" / "nightly").iterdir())[0]
    (corrupt / "metrics" / "summary_stats.json").write_text("{not json")
    return out


def run_dirs(tree: Path) -> list[Path]:
    return sorted(p.parent for p in tree.rglob("run.json") if "wandb" not in p.parts)


def test_dry_run_reports_the_plan_as_json_and_changes_nothing(tree: Path, home: Home) -> None:
    result = upload([str(tree), "--recursive", "--dry-run", "--json", "--mode", "offline"], home, cwd=tree)
    assert result.returncode == 1, result.stderr  # the corrupt directory counts as a failure
    doc = json.loads(result.stdout)
    assert doc["counts"] == {"uploaded": 0, "skipped": 1, "failed": 1, "would upload": N - 2}
    assert not list(tree.rglob("wandb_run.json")) and not list(tree.rglob("wandb"))


def test_backfill_uploads_the_rest_and_reports_each_directory(tree: Path, home: Home) -> None:
    result = upload([str(tree), "-r", "--mode", "offline", "--jobs", "2"], home, cwd=tree)
    assert result.returncode == 1  # one directory failed; the others still uploaded
    assert len(lines_for(result.stdout, "uploaded")) == N - 2
    (skipped,) = lines_for(result.stdout, "skipped")
    assert "still running" in skipped
    (failed,) = lines_for(result.stdout, "failed")
    assert "metrics/summary_stats.json" in failed and "not valid JSON" in failed
    assert result.stdout.strip().splitlines()[-1] == (
        f"veeksha-upload: {N - 2} uploaded, 1 skipped, 1 failed ({N} directories)"
    )
    assert sum(1 for d in run_dirs(tree) if (d / "wandb_run.json").exists()) == N - 2


def test_next_backfill_skips_what_is_uploaded_and_reuploads_what_changed(tree: Path, home: Home) -> None:
    # The first backfill: done already when the test above ran on this worker, else done here.
    upload([str(tree), "-r", "--mode", "offline", "--jobs", "2"], home, cwd=tree)
    changed = run_dirs(tree)[0]
    (changed / "metrics" / "throughput_metrics.json").write_text(json.dumps({"request_throughput": 1.0}))
    result = upload([str(tree), "-r", "--mode", "offline", "--jobs", "2"], home, cwd=tree)
    (uploaded,) = lines_for(result.stdout, "uploaded")
    assert changed.name in uploaded
    already = [line for line in lines_for(result.stdout, "skipped") if "already uploaded" in line]
    assert len(already) == N - 3
    assert len(offline_run_dirs(changed)) == 1  # replaced, not added


def test_two_backfills_at_once_upload_each_directory_once(tmp_path: Path, home: Home) -> None:
    for i in range(6):
        build_run(tmp_path / "runs", RunSpec(seed=50 + i, seconds=2))
    cmd = [VEEKSHA_UPLOAD, str(tmp_path), "-r", "--mode", "offline", "--json"]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, env=home.env(), stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    docs = [json.loads(p.communicate(timeout=240)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    uploaded = [r["path"] for d in docs for r in d["results"] if r["status"] == "uploaded"]
    assert sorted(uploaded) == sorted(str(d) for d in run_dirs(tmp_path))  # each exactly once
    for d in run_dirs(tmp_path):
        assert len(offline_run_dirs(d)) == 1
