"""`veeksha-upload --follow DIR` (issue 8 §5): a live W&B run beside a benchmark that is still writing.

The benchmark is played by the test: it writes run.json (running, with the pid of a stand-in process
on this host), appends timeseries.csv rows one at a time, then writes the results and the final
run.json, as the runner does. The follower is a real `veeksha-upload` process with the real wandb SDK,
online against the loopback fake W&B server, or offline with the `.wandb` file read back.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from veeksha.shared.paths import CAPSEARCH_RESULTS, SWEEP_MANIFEST, UPLOAD_PENDING, RunPaths

from tests.uploader.builders import RunSpec, build_capsearch, build_run, build_sweep
from tests.uploader.conftest import (
    VEEKSHA_UPLOAD,
    Home,
    lines_for,
    local_run_folders,
    make_home,
    online_env,
    read_marker_json,
    until,
    upload,
)
from tests.uploader.fake_wandb import FakeRun, FakeWandb
from tests.uploader.wandb_records import OfflineRun, offline_run_dirs, read_offline_run

SECONDS = 8


class LiveRun:
    """A run directory written the way the runner writes it, from a finished one built by builders."""

    def __init__(self, tmp_path: Path, seed: int = 7) -> None:
        self.full = RunPaths(build_run(tmp_path / "built", RunSpec(seed=seed, seconds=SECONDS)))
        self.paths = RunPaths(tmp_path / "runs" / self.full.root.name)
        self.paths.make_dirs()
        self.stand_in = subprocess.Popen(["sleep", "600"])  # the benchmark's process
        self.info = orjson.loads(self.full.run_json.read_bytes())
        shutil.copy2(self.full.config_yml, self.paths.config_yml)
        self.lines = self.full.timeseries_csv.read_text().splitlines(keepends=True)
        self.paths.timeseries_csv.write_text(self.lines[0])
        self.written = 1
        # The server's scraped metrics grow beside the time series, one row a second.
        self.server_lines = ["elapsed_s,vllm:num_requests_running\n"]
        self.server_lines += [f"{t + 0.5:.3f},{t % 4}\n" for t in range(SECONDS)]
        self.paths.server_metrics_csv.write_text(self.server_lines[0])
        self._write_info(status="running", finished_at=None)

    @property
    def root(self) -> Path:
        return self.paths.root

    def _write_info(self, **changes: Any) -> None:
        info = {**self.info, "host": socket.gethostname(), "pid": self.stand_in.pid, **changes}
        tmp = self.paths.run_json.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
        tmp.replace(self.paths.run_json)

    def append_row(self) -> bool:
        if self.written >= len(self.lines):
            return False
        with self.paths.timeseries_csv.open("a") as f:
            f.write(self.lines[self.written])
        with self.paths.server_metrics_csv.open("a") as f:
            f.write(self.server_lines[self.written])
        self.written += 1
        return True

    def finish(self, rebuilt: bool = False) -> None:
        """Final status (evaluation runs after it), then the results, then finished_at.

        `rebuilt`: evaluation rewrites timeseries.csv (as after recovering lost records), each row's
        `completed` one higher than what was streamed."""
        while self.append_row():
            pass
        self._write_info(status="completed", finished_at=None)
        if rebuilt:
            header, *body = self.lines
            cols = header.strip().split(",")
            at = cols.index("completed")
            fixed = []
            for line in body:
                cells = line.rstrip("\n").split(",")
                cells[at] = str(int(cells[at]) + 1)
                fixed.append(",".join(cells) + "\n")
            tmp = self.paths.timeseries_csv.with_suffix(".tmp")
            tmp.write_text(header + "".join(fixed))
            tmp.replace(self.paths.timeseries_csv)
        for src in sorted(self.full.root.rglob("*")):
            dst = self.root / src.relative_to(self.full.root)
            if src.is_dir():
                dst.mkdir(exist_ok=True)
            elif not dst.exists() or src.name not in ("run.json", "timeseries.csv"):
                shutil.copy2(src, dst)
        self._write_info(status="completed", finished_at=self.info["finished_at"])
        self.stop()

    def kill(self) -> None:
        self.stop()

    def end_unevaluated(self, error: str) -> None:
        """What the runner leaves when recording raised (RunDir.leave_unevaluated): a final status, no
        finished_at, evaluation_error saying why; its process (a sweep's) goes on."""
        why = f"not evaluated; `veeksha-run evaluate {self.root}` writes its metrics"
        self._write_info(status="failed", finished_at=None, error=error, evaluation_error=why)

    def stop(self) -> None:
        if self.stand_in.poll() is None:
            self.stand_in.kill()
            self.stand_in.wait()


@pytest.fixture
def live(tmp_path: Path):
    run = LiveRun(tmp_path)
    yield run
    run.stop()


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return make_home(tmp_path / "home")


@contextmanager
def following(root: Path, home: Home, env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[str]]:
    """`veeksha-upload --follow ROOT` as a real process; killed if the test leaves it running."""
    follower = subprocess.Popen(
        [VEEKSHA_UPLOAD, "--follow", str(root), *args],
        cwd=root.parent,
        env=home.env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield follower
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()


def created_run_id(fake: FakeWandb) -> str:
    # (A copy of the keys: the fake's server thread adds to the dict.)
    key = until(lambda: next(iter(list(fake.runs)), None), 30, "the W&B run created")
    return key[2]


def rows(run: FakeRun) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("_timestamp", "_runtime")} for r in run.history]


def timeseries_rows(run: FakeRun) -> list[dict[str, Any]]:
    return [r for r in rows(run) if "elapsed_s" in r]


def server_rows(run: FakeRun) -> list[dict[str, Any]]:
    return [r for r in rows(run) if "server_elapsed_s" in r]


def without_step(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "_step"}


def snapshot(run: FakeRun) -> dict[str, Any]:
    """What a W&B run shows, minus wall-clock keys and the artifact version inside media file names."""
    summary = {k: v for k, v in run.summary.items() if not k.startswith("_")}
    media = {k: (v.get("_type") if isinstance(v, dict) else v) for k, v in summary.items()}
    return {
        "config": {k: v for k, v in run.config.items() if not k.startswith("_")},
        "summary": media,
        # each file's rows on their own axis: a follower interleaves them, a plain upload does not
        "history_keys": sorted(sorted(r) for r in rows(run)),
        "timeseries": [without_step(r) for r in timeseries_rows(run)],
        "server": [without_step(r) for r in server_rows(run)],
        # every upload logs its tables as new artifact versions: compare what there is, not how often
        "artifacts": sorted({(a.type, tuple(sorted(a.files)), a.state) for a in run.artifacts}),
        "tags": sorted(run.tags),
        "name": run.name,
        "group": run.group,
    }


def test_follow_streams_history_live_and_finishes_like_a_plain_upload(
    live: LiveRun, home: Home, fake_wandb: FakeWandb
) -> None:
    env = online_env(fake_wandb)
    with following(live.root, home, env, "--mode", "online") as follower:
        # The run is created while the benchmark goes, and each row reaches the server shortly after it
        # is written.
        run_id = created_run_id(fake_wandb)
        run = fake_wandb.run(run_id)
        for _ in range(SECONDS - 2):
            live.append_row()
            n = live.written - 1
            until(lambda n=n: len(timeseries_rows(run)) >= n, 8, f"{n} history rows at the server")
            until(lambda n=n: len(server_rows(run)) >= n, 8, f"{n} server metrics rows at the server")
        assert run.state == "running" and not run.summary.get("run_status")
        assert [r["server/vllm:num_requests_running"] for r in server_rows(run)] == [0, 1, 2, 3, 0, 1]
        live.finish()
        out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, out + err
    assert f"View run at {fake_wandb.base_url}" in out or "View run at" in out, out
    assert lines_for(out, "uploaded"), out
    assert run.state == "finished" and fake_wandb.created == 1
    assert run.summary["run_status"] == "completed"
    assert len(timeseries_rows(run)) == SECONDS and len(server_rows(run)) == SECONDS
    [artifact] = [a for a in run.artifacts if a.type == "veeksha-run"]
    assert artifact.state == "COMMITTED" and artifact.files and not artifact.missing()
    marker = read_marker_json(live.root)
    assert marker["run_id"] == run_id and marker["mode"] == "online"
    assert not (live.root / UPLOAD_PENDING).exists()
    live_view = snapshot(run)

    # A later plain upload sees it as done; a forced one rewrites the same run with the same content.
    again = upload([str(live.root), "--mode", "online"], home, live.root.parent, env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already uploaded, unchanged" in again.stdout, again.stdout
    forced = upload([str(live.root), "--mode", "online", "--force"], home, live.root.parent, env)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert fake_wandb.created == 1 and [k[2] for k in fake_wandb.runs] == [run_id]
    assert snapshot(fake_wandb.run(run_id)) == live_view
    assert len(local_run_folders(live.root)) == 1  # the last attempt's local log only


def test_follower_of_a_dead_benchmark_leaves_the_run_resumable(
    live: LiveRun, home: Home, fake_wandb: FakeWandb
) -> None:
    env = online_env(fake_wandb)
    with following(live.root, home, env, "--mode", "online") as follower:
        run_id = created_run_id(fake_wandb)
        live.append_row()
        live.append_row()
        until(lambda: len(timeseries_rows(fake_wandb.run(run_id))) >= 2, 8, "2 history rows")
        live.kill()  # run.json still says running; its process is gone
        out, err = follower.communicate(timeout=45)
    assert follower.returncode == 1, out + err
    assert "stopped without finishing" in out + err, out + err
    assert (live.root / UPLOAD_PENDING).read_text().strip() == run_id
    assert not (live.root / "wandb_run.json").exists()

    # What `veeksha-run evaluate` leaves (a final status and finished_at), then a plain upload: the
    # same W&B run is completed.
    live.finish()
    done = upload([str(live.root), "--mode", "online"], home, live.root.parent, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert lines_for(done.stdout, "uploaded"), done.stdout
    assert fake_wandb.created == 1 and [k[2] for k in fake_wandb.runs] == [run_id]
    run = fake_wandb.run(run_id)
    assert run.state == "finished" and run.summary["run_status"] == "completed"
    assert len(timeseries_rows(run)) == SECONDS
    assert read_marker_json(live.root)["run_id"] == run_id
    assert not (live.root / UPLOAD_PENDING).exists()


def test_a_timeseries_rebuilt_at_the_end_replaces_the_streamed_history(
    live: LiveRun, home: Home, fake_wandb: FakeWandb
) -> None:
    with following(live.root, home, online_env(fake_wandb), "--mode", "online") as follower:
        run = fake_wandb.run(created_run_id(fake_wandb))
        for _ in range(3):
            live.append_row()
        until(lambda: len(timeseries_rows(run)) >= 3, 8, "3 history rows at the server")
        live.finish(rebuilt=True)
        out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, out + err
    assert "were rebuilt at the end" in err, err
    assert fake_wandb.created == 1 and run.state == "finished"
    completed = [r["timeseries/completed"] for r in timeseries_rows(run)]
    expected = [int(line.split(",")[2]) for line in live.paths.timeseries_csv.read_text().splitlines()[1:]]
    assert completed == expected
    assert read_marker_json(live.root)["run_id"] == run.run_id
    again = upload([str(live.root), "--mode", "online"], home, live.root.parent, online_env(fake_wandb))
    assert "already uploaded, unchanged" in again.stdout, again.stdout


def test_offline_follow_equals_a_post_hoc_offline_upload(live: LiveRun, home: Home) -> None:
    with following(live.root, home, {}, "--mode", "offline") as follower:
        until(lambda: offline_run_dirs(live.root), 30, "the offline run folder")
        for _ in range(3):
            live.append_row()
            time.sleep(0.3)
        live.finish()
        out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, out + err
    [folder] = offline_run_dirs(live.root)
    followed = comparable(read_offline_run(folder))
    assert followed["history"][-1]["elapsed_s"] == SECONDS - 1

    again = upload([str(live.root), "--mode", "offline"], home, live.root.parent)
    assert "already uploaded offline, unchanged" in again.stdout, again.stdout
    forced = upload([str(live.root), "--mode", "offline", "--force"], home, live.root.parent)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    [folder] = offline_run_dirs(live.root)
    assert comparable(read_offline_run(folder)) == followed


def comparable(run: OfflineRun) -> dict[str, Any]:
    """An offline run minus wall-clock keys and the artifact version inside media file names."""
    summary = run.user_summary()
    return {
        "run_id": run.run.run_id,
        "tags": run.tags,
        "config": run.user_config(),
        "summary": {k: (v.get("_type") if isinstance(v, dict) else v) for k, v in summary.items()},
        "history_keys": sorted(
            sorted(k for k in r if k not in ("_timestamp", "_runtime")) for r in run.history
        ),
        "history": [
            {k: v for k, v in r.items() if k not in ("_timestamp", "_runtime", "_step")}
            for r in run.history
            if "elapsed_s" in r
        ],
        "server": [
            {k: v for k, v in r.items() if k not in ("_timestamp", "_runtime", "_step")}
            for r in run.history
            if "server_elapsed_s" in r
        ],
        "artifacts": sorted((a.name, a.type, sorted(a.entries)) for a in run.artifacts),
        "exit_code": run.exit_code,
    }


def test_following_a_finished_run_is_a_plain_upload(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    root = build_run(tmp_path / "runs", RunSpec(seed=9, seconds=3))
    env = online_env(fake_wandb)
    first = upload(["--follow", str(root), "--mode", "online"], home, root.parent, env)
    assert first.returncode == 0 and lines_for(first.stdout, "uploaded"), first.stdout + first.stderr
    second = upload(["--follow", str(root), "--mode", "online"], home, root.parent, env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already uploaded, unchanged" in second.stdout, second.stdout
    assert fake_wandb.created == 1


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--dry-run"], "--dry-run"),
        (["--json"], "--json"),
        (["--jobs", "2"], "--jobs"),
        (["-j", "1"], "--jobs"),
    ],
)
def test_follow_refuses_the_plain_upload_flags_it_cannot_honour(
    tmp_path: Path, home: Home, args: list[str], flag: str
) -> None:
    """--follow creates the run at once (no dry run), prints as it goes (no one JSON document at the end)
    and follows one directory (no workers): such a flag is a usage error naming it, before anything
    is written, never silently dropped."""
    root = build_run(tmp_path / "runs", RunSpec(seed=9, seconds=3))
    before = sorted(p.name for p in root.iterdir())
    result = upload(["--follow", str(root), "--mode", "offline", *args], home, root.parent)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"veeksha-upload: {flag} cannot be combined with --follow")
    assert result.stdout == ""
    assert sorted(p.name for p in root.iterdir()) == before  # no wandb/, no wandb_run.json


def test_follow_honours_force(tmp_path: Path, home: Home) -> None:
    """--force means what it means for a plain upload: upload again onto the same run, though unchanged."""
    root = build_run(tmp_path / "runs", RunSpec(seed=9, seconds=3))
    first = upload(["--follow", str(root), "--mode", "offline"], home, root.parent)
    assert lines_for(first.stdout, "uploaded"), first.stdout + first.stderr
    forced = upload(["--follow", str(root), "--mode", "offline", "--force"], home, root.parent)
    assert forced.returncode == 0 and lines_for(forced.stdout, "uploaded"), forced.stdout + forced.stderr
    assert len(offline_run_dirs(root)) == 1


def test_following_a_run_left_without_metrics_skips_it_at_once_saying_why(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    """Its evaluation failed (run.json evaluation_error, no finished_at): nothing will come to follow."""
    root = build_run(tmp_path / "runs", RunSpec(seed=9, seconds=3))
    info = orjson.loads((root / "run.json").read_bytes())
    why = "evaluation failed: OSError: disk full; rerun `veeksha-run evaluate runs/x`"
    (root / "run.json").write_bytes(orjson.dumps({**info, "finished_at": None, "evaluation_error": why}))
    started = time.monotonic()
    result = upload(["--follow", str(root), "--mode", "online"], home, root.parent, online_env(fake_wandb))
    assert time.monotonic() - started < 60  # not the follower's wait for a benchmark to end
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = lines_for(result.stdout, "skipped")
    assert f"no metrics yet: {why}" in line
    assert fake_wandb.created == 0 and not (root / UPLOAD_PENDING).exists()


def test_a_followed_run_whose_artifact_the_sdk_gave_up_on_fails(
    live: LiveRun, home: Home, fake_wandb: FakeWandb
) -> None:
    # The live follower (veeksha-run's own online upload) skipped the check a plain upload makes:
    # a refused artifact was reported "uploaded".
    env = online_env(fake_wandb)
    with following(live.root, home, env, "--mode", "online") as follower:
        created_run_id(fake_wandb)
        fake_wandb.fail("403", "artifacts")
        live.finish()
        out, err = follower.communicate(timeout=120)
    assert follower.returncode == 1 and lines_for(out, "failed"), out + err
    assert "W&B does not have the veeksha-run artifact's files" in out
    assert (live.root / UPLOAD_PENDING).exists() and not (live.root / "wandb_run.json").exists()


def test_the_follower_losing_the_race_to_create_its_run_leaves_it_to_the_winner(
    live: LiveRun, home: Home, fake_wandb: FakeWandb
) -> None:
    """As a plain upload (test_review_fixes): the run another upload created between our look-up and
    our `init` is not ours. The follower's pending file named it, so the next plain upload took it for
    an interrupted upload of ours and rewound the winner's run."""
    env = online_env(fake_wandb)
    winner = upload([str(live.full.root), "--mode", "online"], home, live.full.root.parent, env)
    assert winner.returncode == 0, winner.stdout + winner.stderr
    run_id = read_marker_json(live.full.root)["run_id"]
    digest = fake_wandb.run(run_id).config["veeksha_upload_digest"]
    fake_wandb.hide_from_first_lookup(run_id)  # our look-up sees no run; the SDK's init sees it
    with following(live.root, home, env, "--mode", "online") as follower:
        out, err = follower.communicate(timeout=90)
    assert follower.returncode == 1 and "created this W&B run meanwhile" in out, out + err
    assert not (live.root / UPLOAD_PENDING).exists()

    live.finish()
    again = upload([str(live.root), "--mode", "online"], home, live.root.parent, env)
    assert "uploaded from elsewhere" in again.stdout, again.stdout + again.stderr
    run = fake_wandb.run(run_id)
    assert run.rewinds == 0 and run.config["veeksha_upload_digest"] == digest and fake_wandb.created == 1


def test_a_followed_run_that_ended_without_metrics_ends_its_follower_at_once(
    live: LiveRun, home: Home, fake_wandb: FakeWandb
) -> None:
    """Recording raised (disk full, a Ray error): run.json has a final status and evaluation_error, and the
    process that wrote it (a sweep's) goes on. The follower watched only finished_at and that pid: it kept
    its W&B run "running" and the directory locked until the whole sweep ended."""
    with following(live.root, home, online_env(fake_wandb), "--mode", "online") as follower:
        run = fake_wandb.run(created_run_id(fake_wandb))
        live.append_row()
        until(lambda: timeseries_rows(run), 8, "a history row at the server")
        live.end_unevaluated("RuntimeError: the Ray cluster went away")
        out, err = follower.communicate(timeout=30)
    assert live.stand_in.poll() is None  # not the dead-pid path: the runner's process is alive
    assert follower.returncode == 1, out + err
    (line,) = lines_for(out, "failed")
    assert "(it ended failed, without metrics: RuntimeError: the Ray cluster went away)" in line, line
    assert f"left resumable: `veeksha-run evaluate {live.root}` then `veeksha-upload" in line, line
    assert run.state == "failed" and fake_wandb.created == 1
    assert (live.root / UPLOAD_PENDING).read_text().strip() == run.run_id
    assert not (live.root / "wandb_run.json").exists()


def test_follow_refuses_a_directory_whose_wandb_folder_is_a_link(
    live: LiveRun, home: Home, tmp_path: Path
) -> None:
    """As a plain upload: the SDK's run and the redacted copies were written wherever the link pointed."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    (live.root / "wandb").symlink_to(victim, target_is_directory=True)
    with following(live.root, home, {}, "--mode", "offline") as follower:
        out, err = follower.communicate(timeout=60)
    assert follower.returncode == 1, out + err
    (line,) = lines_for(out, "failed")
    assert f"{live.root / 'wandb'} is a symbolic link" in line and "remove the link" in line, line
    assert [p.name for p in victim.iterdir()] == ["keep.txt"]
    assert not (live.root / UPLOAD_PENDING).exists()


def test_follow_refuses_a_directory_whose_name_is_not_utf8(tmp_path: Path, home: Home) -> None:
    built = build_run(tmp_path / "runs", RunSpec(seed=9, seconds=3))
    root = Path(os.fsdecode(os.fsencode(built.parent) + b"/run-\xfe"))
    built.rename(root)
    result = upload(["--follow", str(root), "--mode", "offline"], home, root.parent, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = lines_for(result.stdout, "failed")
    assert "run-\\xfe: the directory name is not valid UTF-8; rename it to upload it" in line, line
    assert not (root / "wandb").exists() and not (root / UPLOAD_PENDING).exists()


@pytest.mark.parametrize(
    ("env", "wandb"),
    [({"WANDB_DISABLED": "true"}, {}), ({"WANDB_MODE": "disabled"}, {}), ({}, {"mode": "disabled"})],
    ids=["WANDB_DISABLED", "WANDB_MODE", "config"],
)
def test_follow_skips_a_disabled_run_as_a_plain_upload_does(
    tmp_path: Path, home: Home, env: dict[str, str], wandb: dict[str, str]
) -> None:
    """It deleted the marker of an earlier upload, wrote the pending file and a "disabled" marker
    reported as uploaded."""
    root = build_run(tmp_path / "runs", RunSpec(seed=9, seconds=3, wandb=wandb))
    first = upload([str(root), "--mode", "offline"], home, root.parent)
    assert lines_for(first.stdout, "uploaded"), first.stdout + first.stderr
    marker = (root / "wandb_run.json").read_bytes()
    plain = upload([str(root)], home, root.parent, env)
    followed = upload(["--follow", str(root)], home, root.parent, env, timeout=60)
    assert followed.returncode == plain.returncode == 0, followed.stdout + followed.stderr
    (line,) = lines_for(followed.stdout, "skipped")
    assert line.endswith("W&B mode is 'disabled' (pass --mode online|offline)"), line
    assert lines_for(plain.stdout, "skipped") == [line]
    assert (root / "wandb_run.json").read_bytes() == marker
    assert not (root / UPLOAD_PENDING).exists()


def _not_a_run(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A directory --follow must refuse at once, and what its line says."""
    if kind == "sweep":
        return build_sweep(tmp_path / "out"), f"is a sweep directory ({SWEEP_MANIFEST})"
    if kind == "capsearch":
        return build_capsearch(tmp_path / "out"), f"is a capacity-search directory ({CAPSEARCH_RESULTS})"
    if kind == "parent":  # benchmark_output/ itself, its runs inside
        build_run(tmp_path / "out", RunSpec(seed=9, seconds=3))
        return tmp_path / "out", "is not a run directory (no run.json"
    return tmp_path / "nowhere", "no such directory"


@pytest.mark.parametrize("kind", ["sweep", "capsearch", "parent", "missing"])
def test_follow_refuses_a_directory_that_is_not_a_run_at_once(tmp_path: Path, home: Home, kind: str) -> None:
    """It waited 120 s for a run.json that would never come, then exited 1."""
    root, says = _not_a_run(tmp_path, kind)
    started = time.monotonic()
    result = upload(["--follow", str(root), "--mode", "offline"], home, tmp_path, timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"veeksha-upload: {root}") and says in line, line
    assert result.stdout == ""


def test_follow_waits_for_a_run_that_has_not_written_its_run_json_yet(tmp_path: Path, home: Home) -> None:
    """What the runner writes before run.json (its folders, config.yml, a temporary): a run to come."""
    built = RunPaths(build_run(tmp_path / "built", RunSpec(seed=9, seconds=3)))
    paths = RunPaths(tmp_path / "runs" / built.root.name)
    paths.make_dirs()
    shutil.copy2(built.config_yml, paths.config_yml)
    temporary = paths.root / ".run.json.x1y2.tmp"
    temporary.write_bytes(b"")
    stand_in = subprocess.Popen(["sleep", "600"])  # the benchmark's process
    here = {"host": socket.gethostname(), "pid": stand_in.pid}
    info = {**orjson.loads(built.run_json.read_bytes()), **here}
    try:
        with following(paths.root, home, {}, "--mode", "offline") as follower:
            time.sleep(3)
            assert follower.poll() is None, follower.communicate()
            # Then as the runner goes on: its run.json (running) in place of the temporary, the run's
            # files (none of them before run.json: a follower refuses a directory that has them), then
            # the final run.json, replaced at once.
            temporary.write_bytes(orjson.dumps({**info, "status": "running", "finished_at": None}))
            temporary.replace(paths.run_json)
            shutil.copytree(built.root, paths.root, dirs_exist_ok=True, ignore=lambda d, names: ["run.json"])
            temporary.write_bytes(orjson.dumps(info))
            temporary.replace(paths.run_json)
            stand_in.kill()
            out, err = follower.communicate(timeout=120)
    finally:
        stand_in.kill()
        stand_in.wait()
    assert follower.returncode == 0, out + err
    assert lines_for(out, "uploaded"), out


def test_follow_refuses_a_directory_it_waited_on_once_it_turns_out_a_sweep(
    tmp_path: Path, home: Home
) -> None:
    root = tmp_path / "sweep-20250101-120000"
    root.mkdir()
    with following(root, home, {}, "--mode", "offline") as follower:
        time.sleep(2)
        assert follower.poll() is None, follower.communicate()
        (root / SWEEP_MANIFEST).write_text("{}")
        out, err = follower.communicate(timeout=30)
    assert follower.returncode == 2, out + err
    assert f"is a sweep directory ({SWEEP_MANIFEST})" in err and out == "", out + err


def _replace_file(path: Path, text: str) -> None:
    """As shared.jsonio.write_atomic does: a new file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_the_live_server_rows_go_on_after_the_scraper_widens_its_file(tmp_path: Path) -> None:
    """A series that first appears mid-run (vLLM's request counters) makes the scraper rewrite
    server_metrics.csv with one more column: the rows streamed so far are still its first rows, so
    the live run goes on streaming instead of giving up until the final upload."""
    from veeksha.uploader.follow import TimeseriesTail

    path = tmp_path / "metrics" / "server_metrics.csv"
    path.parent.mkdir()
    path.write_text("elapsed_s,running\n1.0,3\n2.0,4\n")
    tail = TimeseriesTail(path)
    assert tail.read() == [{"elapsed_s": 1.0, "running": 3}, {"elapsed_s": 2.0, "running": 4}]

    _replace_file(path, "elapsed_s,running,success_total\n1.0,3,\n2.0,4,\n3.0,5,0.5\n")

    assert tail.read() == [{"elapsed_s": 3.0, "running": 5, "success_total": 0.5}]
    assert not tail.replaced
    with path.open("a") as f:
        f.write("4.0,6,1.5\n")
    assert tail.read() == [{"elapsed_s": 4.0, "running": 6, "success_total": 1.5}]


def test_a_file_rewritten_with_other_rows_is_left_to_the_final_upload(tmp_path: Path) -> None:
    from veeksha.uploader.follow import TimeseriesTail

    path = tmp_path / "metrics" / "timeseries.csv"
    path.parent.mkdir()
    path.write_text("elapsed_s,n\n1.0,3\n2.0,4\n")
    tail = TimeseriesTail(path)
    tail.read()

    _replace_file(path, "elapsed_s,n\n1.0,3\n2.0,5\n3.0,6\n")  # evaluation rebuilt it: row 2 differs

    assert tail.read() == []
    assert tail.replaced


def _stat_field(pid: int, index: int) -> str:
    """A field of /proc/<pid>/stat counted after the command name (state is 0, start time 19)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[index]


def _judged_gone(tmp_path: Path, pid: int, **recorded: Any) -> bool:
    """Whether the follower's watch takes the process run.json names for gone once DEAD_AFTER_S has
    passed (the watch's clock is moved on rather than waited for)."""
    from veeksha.uploader.follow import DEAD_AFTER_S, BenchmarkDied, Watch

    watch = Watch(tmp_path)
    info = {"status": "running", "host": socket.gethostname(), "pid": pid, **recorded}
    watch.check_alive(info)
    if watch.gone_since is None:
        return False
    watch.gone_since -= DEAD_AFTER_S
    with pytest.raises(BenchmarkDied, match=f"pid {pid}"):
        watch.check_alive(info)
    return True


def test_the_benchmark_process_is_known_by_its_pid_and_start_time(tmp_path: Path) -> None:
    """run.json records when its process started beside its pid: a process holding that pid but
    started at another time (the pid was given again, say in a restarted container) is not the
    benchmark, and its follower ends instead of waiting for ever."""
    stand_in = subprocess.Popen(["sleep", "600"])
    try:
        started = int(_stat_field(stand_in.pid, 19))
        assert not _judged_gone(tmp_path, stand_in.pid, pid_start_ticks=started)
        assert not _judged_gone(tmp_path, stand_in.pid)  # older run.json: the pid alone
        assert _judged_gone(tmp_path, stand_in.pid, pid_start_ticks=started + 1)
    finally:
        stand_in.kill()
        stand_in.wait()


def test_the_follower_never_takes_itself_for_the_benchmark(tmp_path: Path) -> None:
    """A restarted container gives its first process the pid the benchmark had: when that is the
    follower itself, the benchmark is gone. Its parent may well be the benchmark: the runner starts
    its own follower (`wandb.follow`)."""
    assert _judged_gone(tmp_path, os.getpid())
    assert not _judged_gone(tmp_path, os.getppid())
