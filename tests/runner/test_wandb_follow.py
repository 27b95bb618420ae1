"""`veeksha-run` with W&B online keeps a live W&B run while the benchmark goes (issue 8 §5).

A real `veeksha-run` against the built-in simulated server, `wandb.enabled` and online, pointed at the
loopback fake W&B server (tests/uploader/fake_wandb.py) through WANDB_BASE_URL / WANDB_API_KEY. The
runner starts `veeksha-upload --follow` itself; the test watches what reaches the fake while the run
is still going.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from veeksha.runner import benchmark
from veeksha.runner.evaluation.evaluate import NO_PLOTS_ENV
from veeksha.shared.config import BenchmarkConfig
from veeksha.shared.config_loader import build_benchmark_config
from veeksha.shared.paths import UPLOAD_PENDING, RunPaths

from tests.runner.helpers import VEEKSHA_RUN, run_cli
from tests.uploader.conftest import Home, make_home, online_env, read_marker_json, until, upload
from tests.uploader.fake_wandb import FakeRun, FakeWandb

# Long against the follower's start: it imports wandb and creates its W&B run at a lower CPU priority
# (follow.NICE), seconds on a busy machine, and its first rows must reach the fake before the end.
# A benchmark cannot be ended early as `completed`, so no test here can wait on that event instead.
RUN_S = 30


def args(seconds: int = RUN_S) -> list[str]:
    return [
        "--server.type",
        "simulated",
        "--traffic_scheduler.interval_generator.arrival_rate",
        "10",
        "--runtime.benchmark_timeout",
        str(seconds),
        "--wandb.enabled",
        "true",
        "--wandb.project",
        "live",
        "--output_dir",
        "out",
    ]


def start_run(tmp_path: Path, home: Home, fake: FakeWandb, seconds: int = RUN_S) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [VEEKSHA_RUN, *args(seconds)],
        cwd=tmp_path,
        env=home.env({**online_env(fake), NO_PLOTS_ENV: "1"}),  # no test here looks at the PNGs
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the test can kill the whole benchmark
    )


def run_dir_of(tmp_path: Path) -> RunPaths:
    def found() -> Path | None:
        dirs = [p for p in (tmp_path / "out").glob("*") if (p / "run.json").is_file()]
        return dirs[0] if dirs else None

    return RunPaths(until(found, 60, "the run directory"))


def status(paths: RunPaths) -> str:
    return orjson.loads(paths.run_json.read_bytes())["status"]


def timeseries_rows(run: FakeRun) -> list[dict[str, Any]]:
    return [r for r in run.history if "elapsed_s" in r]


def only_run(fake: FakeWandb) -> FakeRun:
    # (A copy of the keys: the fake's server thread adds to the dict.)
    key = until(lambda: next(iter(list(fake.runs)), None), 60, "the W&B run created")
    return fake.run(key[2])


def first_timeseries_arrival(run: FakeRun) -> float | None:
    """When (time.time()) the first timeseries row reached the fake W&B server (once its follower has
    ended: the fake's server thread appends to both lists)."""
    rows = zip(run.history, run.history_arrivals, strict=True)
    return min((at for row, at in rows if "elapsed_s" in row), default=None)


def stop_followers(tmp_path: Path) -> None:
    """A failed test must not leave a follower behind (its own session: killing the benchmark spares it)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if b"--follow" in cmdline and cwd == str(tmp_path):
            os.kill(int(proc.name), signal.SIGKILL)


@pytest.fixture
def home(tmp_path: Path) -> Any:
    yield make_home(tmp_path / "home")
    stop_followers(tmp_path)


@pytest.fixture
def fake() -> Any:
    with FakeWandb() as server:
        yield server


def test_history_reaches_wandb_while_the_benchmark_runs(tmp_path: Path, home: Home, fake: FakeWandb) -> None:
    proc = start_run(tmp_path, home, fake)
    try:
        paths = run_dir_of(tmp_path)
        run = only_run(fake)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, out + err
    # Rows arrived before the benchmark ended: the recorder's last write to the request log (which
    # only the recorder writes; its status leaves `running` after that).
    arrived, ended = first_timeseries_arrival(run), paths.request_records.stat().st_mtime
    assert arrived is not None and arrived < ended, f"first row at {arrived}, the benchmark ended at {ended}"
    assert "View run at" in out and "live W&B run" in out, out
    assert "upload failed" not in err, err
    assert status(paths) == "completed"
    assert fake.created == 1 and run.state == "finished"
    assert run.summary["run_status"] == "completed"
    assert len(timeseries_rows(run)) >= RUN_S - 1
    [artifact] = [a for a in run.artifacts if a.type == "veeksha-run"]
    assert artifact.state == "COMMITTED" and not artifact.missing()
    assert "metrics/timeseries.csv" in artifact.files
    marker = read_marker_json(paths.root)
    assert marker["run_id"] == run.run_id and marker["mode"] == "online"
    assert not (paths.root / UPLOAD_PENDING).exists()
    # The live run is what a post-hoc upload would have made: a plain upload has nothing to do.
    again = upload([str(paths.root)], home, tmp_path, online_env(fake))
    assert "already uploaded, unchanged" in again.stdout, again.stdout + again.stderr


def test_a_killed_benchmark_leaves_its_live_run_resumable(
    tmp_path: Path, home: Home, fake: FakeWandb
) -> None:
    proc = start_run(tmp_path, home, fake, seconds=60)
    try:
        paths = run_dir_of(tmp_path)
        run = only_run(fake)
        until(lambda: timeseries_rows(run), 30, "timeseries rows at the fake W&B server")
        os.killpg(proc.pid, signal.SIGKILL)  # runner, driver and simulated server; not the follower
        # The follower (own session) holds the runner's stdout until it gives up on the dead benchmark.
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert "stopped without finishing" in out + err, out + err
    assert status(paths) == "running"
    assert (paths.root / UPLOAD_PENDING).read_text().strip() == run.run_id
    assert not paths.wandb_run_json.exists()

    evaluated = run_cli(["evaluate", str(paths.root)], cwd=tmp_path, env=home.env())
    assert evaluated.returncode in (0, 1), evaluated.stdout + evaluated.stderr
    done = upload([str(paths.root)], home, tmp_path, online_env(fake))
    assert done.returncode == 0, done.stdout + done.stderr
    assert fake.created == 1 and [k[2] for k in fake.runs] == [run.run_id]
    assert run.state == "finished" and run.summary["run_status"] == "crashed"
    assert read_marker_json(paths.root)["run_id"] == run.run_id
    assert not (paths.root / UPLOAD_PENDING).exists()


def test_a_failed_follower_prints_the_retry_line_and_keeps_the_exit_status(
    tmp_path: Path, home: Home, fake: FakeWandb
) -> None:
    env = {**online_env(fake), "WANDB_API_KEY": "x" * 40, NO_PLOTS_ENV: "1"}  # the fake refuses this key
    proc = subprocess.run(
        [VEEKSHA_RUN, *args(2)], cwd=tmp_path, env=home.env(env), capture_output=True, text=True, timeout=90
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    paths = run_dir_of(tmp_path)
    assert f"Retry with: veeksha-upload {paths.root.relative_to(tmp_path)}\n" in proc.stderr, proc.stderr
    assert "x" * 40 not in proc.stdout + proc.stderr
    assert fake.created == 0


def test_a_failed_evaluation_stops_the_follower_and_leaves_its_run_resumable(
    tmp_path: Path, home: Home, fake: FakeWandb
) -> None:
    """No metrics, no finished_at: the follower would wait for them until the runner's deadline (8
    minutes). The runner stops it at once; evaluate, then a plain upload, finish the same W&B run."""
    proc = start_run(tmp_path, home, fake)
    try:
        paths = run_dir_of(tmp_path)
        # The follower's W&B run first: a follower that first reads run.json once the evaluation has
        # failed has nothing to follow, and makes none (a plain upload's "no metrics").
        run = only_run(fake)
        paths.summary_stats.mkdir(parents=True)  # the evaluation's first file cannot be written
        # (Evaluated only once run.json says how the run ended: it will find the directory.)
        assert status(paths) == "running", "the benchmark ended before its follower made its W&B run"
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 1, out + err
    assert "evaluation failed: IsADirectoryError" in err
    assert f"not uploaded (no metrics): `veeksha-run evaluate {paths.root.relative_to(tmp_path)}`" in err
    assert (paths.root / UPLOAD_PENDING).read_text().strip() == run.run_id
    assert not paths.wandb_run_json.exists()

    paths.summary_stats.rmdir()
    assert run_cli(["evaluate", str(paths.root)], cwd=tmp_path, env=home.env()).returncode == 0
    done = upload([str(paths.root)], home, tmp_path, online_env(fake))
    assert done.returncode == 0, done.stdout + done.stderr
    assert fake.created == 1 and run.state == "finished" and run.summary["run_status"] == "completed"


def test_a_run_that_raises_ends_its_follower_before_it_returns(
    tmp_path: Path, home: Home, fake: FakeWandb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording raised (disk full, a Ray error): a sweep reports the run failed and goes on in the same
    process, whose pid the follower watches. The follower it had started was never stopped: its W&B
    run stayed "running" and the directory locked until the whole sweep ended."""
    for name in [k for k in os.environ if k.startswith(("WANDB_", "OPENAI_"))]:
        monkeypatch.delenv(name)
    for name, value in home.env(online_env(fake)).items():  # what the follower inherits
        monkeypatch.setenv(name, value)
    followers: list[subprocess.Popen[bytes]] = []
    start = benchmark.start_follower

    def started(run_dir: Path) -> subprocess.Popen[bytes] | None:
        follower = start(run_dir)
        followers.extend([follower] if follower is not None else [])
        return follower

    def lost_cluster(cfg: BenchmarkConfig, run: Any, server: Any) -> Any:
        until(lambda: fake.runs, 60, "the live W&B run")
        raise RuntimeError("the Ray cluster went away")

    monkeypatch.setattr(benchmark, "start_follower", started)
    monkeypatch.setattr(benchmark, "_record", lost_cluster)
    tree = {"client": {"api_base": "http://127.0.0.1:9/v1", "model": "m"}, "wandb": {"enabled": True}}
    try:
        with pytest.raises(RuntimeError, match="the Ray cluster went away"):
            benchmark.run_benchmark(build_benchmark_config(tree), tmp_path / "out", argv=["veeksha-run"])
        (follower,) = followers
        # Ended before run_benchmark returned, on its own: run.json said the run ended without metrics.
        assert follower.poll() == 1
    finally:
        for follower in followers:
            if follower.poll() is None:
                follower.kill()
            follower.wait()
    paths = run_dir_of(tmp_path)
    assert status(paths) == "failed"
    run = only_run(fake)
    assert run.state == "failed" and fake.created == 1
    assert (paths.root / UPLOAD_PENDING).read_text().strip() == run.run_id
