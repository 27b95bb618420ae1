"""Ctrl-C at the edges of a run's traffic and of its upload (the rule: runner/benchmark.py, sweep.py
run_sweep). During the run's traffic, from the moment its recorder exists, the run ends `interrupted`
and is evaluated and uploaded; after it (its server stopping, its upload) nothing more is uploaded,
no uploader is left behind, and `veeksha-upload DIR` is printed.

Real runs against the simulated server in this process; only the moment of the Ctrl-C is arranged
(a signal cannot be timed to land inside a two-second probe or a server's stop reliably)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import polars  # noqa: F401  (as in veeksha-run after any evaluation: its import sets SA_RESTART on SIGINT)
import pytest
import veeksha.runner.benchmark as benchmark
from veeksha.runner.evaluation.evaluate import NO_PLOTS_ENV
from veeksha.runner.server_launcher import ServerHandle
from veeksha.shared.config import BenchmarkConfig, WandbConfig
from veeksha.shared.paths import WANDB_RUN_JSON
from veeksha.shared.starting import raise_terminated

from tests.runner.helpers import VEEKSHA_RUN, no_plots_env, only_run_dir
from tests.uploader.conftest import make_home

HINT = "upload interrupted; the run's results are unchanged. Upload it with: veeksha-upload"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private home for the SDK in this process's environment (the runner's uploader inherits it),
    and no PNG plots (~1 s per run; no test here looks at them)."""
    for key in [k for k in os.environ if k.startswith(("WANDB_", "OPENAI_"))]:
        monkeypatch.delenv(key)
    for key, value in make_home(tmp_path / "home").env({NO_PLOTS_ENV: "1"}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)


def run_main(args: list[str]) -> int:
    from veeksha.runner.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--server.type", "simulated", "--runtime.benchmark_timeout", "1", "--output_dir", "out", *args])
    return int(exited.value.code or 0)


def sleeper(seconds: float = 60) -> subprocess.Popen[bytes]:
    """A process that stands in for the follower (its own session, as start_follower's)."""
    cmd = [sys.executable, "-c", f"import time; time.sleep({seconds})"]
    return subprocess.Popen(cmd, start_new_session=True)


@pytest.mark.usefixtures("home")
def test_a_ctrl_c_while_the_server_stops_stops_the_follower_and_says_how_to_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The run ended and was evaluated; the Ctrl-C comes as its server stops. The follower (its own
    # session: it got none) went on uploading in the background, and nothing said so.
    followers: list[subprocess.Popen[bytes]] = []

    def start_follower(run_dir: Path) -> subprocess.Popen[bytes]:
        followers.append(sleeper())
        return followers[-1]

    monkeypatch.setattr(benchmark, "start_follower", start_follower)
    real_stop = ServerHandle.stop

    def interrupted_stop(self: ServerHandle, *args: Any, **kwargs: Any) -> None:
        real_stop(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ServerHandle, "stop", interrupted_stop)
    try:
        code = run_main(["--wandb.enabled", "true", "--wandb.mode", "online"])
        assert code == 130
        (follower,) = followers
        assert follower.poll() is not None  # stopped, not left uploading
    finally:
        for f in followers:
            f.kill()
            f.wait()
    paths = only_run_dir(tmp_path / "out")
    assert f"{HINT} out/{paths.root.name}" in capsys.readouterr().err


@pytest.mark.usefixtures("home")
def test_a_ctrl_c_as_the_server_metrics_are_probed_ends_the_run_interrupted_and_uploads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The recorder exists, the drivers not yet: a Ctrl-C in the probe (up to 2 s) was a plain
    # KeyboardInterrupt, the run left unevaluated and not uploaded.
    real_probe = benchmark.probe

    def interrupted_probe(url: str, secrets: Any = ()) -> str | None:
        signal.raise_signal(signal.SIGINT)
        return real_probe(url, secrets)

    monkeypatch.setattr(benchmark, "probe", interrupted_probe)
    code = run_main(["--wandb.enabled", "true", "--wandb.mode", "offline"])
    assert code == 130, capsys.readouterr()
    paths = only_run_dir(tmp_path / "out")
    info = orjson.loads(paths.run_json.read_bytes())
    assert (info["status"], info["error"]) == ("interrupted", "interrupted while the drivers were starting")
    assert info["finished_at"] and "evaluation_error" not in info  # evaluated
    assert (paths.root / WANDB_RUN_JSON).is_file()  # and uploaded


# ---------------------------------------------------------------- the uploader's own Ctrl-C

# A stand-in uploader: ready once its Ctrl-C handler is in place; on SIGINT (or SIGTERM) it takes CLEANUP_S to
# finish (its exit line, its lock), then says so and exits 130.
FAKE_UPLOADER = """
import pathlib, signal, sys, time
here = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    time.sleep(float(sys.argv[2]))
    (here / "cleaned").touch()
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)  # as the uploader's: a SIGTERM stops it as Ctrl-C does
(here / "ready").touch()
time.sleep(60)
"""


@pytest.fixture
def fake_uploader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[subprocess.Popen[bytes]]]:
    """upload()'s uploader replaced by FAKE_UPLOADER (cleanup time: the `cleanup_s` the test sets
    in tmp_path/cleanup_s); the processes started, killed at the end whatever the test did."""
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def popen(cmd: Any, *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        cleanup_s = (tmp_path / "cleanup_s").read_text()
        started.append(real_popen([sys.executable, "-c", FAKE_UPLOADER, str(tmp_path), cleanup_s], **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", popen)
    for key in ("WANDB_MODE", "WANDB_DISABLED"):
        monkeypatch.delenv(key, raising=False)
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def ctrl_c(tmp_path: Path, started: list[subprocess.Popen[bytes]], times: int = 1) -> None:
    """Once the uploader is ready: Ctrl-C at the terminal (SIGINT to it and to this main thread),
    then `times - 1` more to this process half a second apart."""

    def press() -> None:
        deadline = time.monotonic() + 30
        while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(started[0].pid, signal.SIGINT)
        for _ in range(times):
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            time.sleep(0.5)

    threading.Thread(target=press, daemon=True).start()


CFG = BenchmarkConfig(wandb=WandbConfig(enabled=True, mode="offline"))


def test_a_ctrl_c_during_the_upload_lets_the_uploader_finish_its_own_stop(
    tmp_path: Path, fake_uploader: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    # subprocess.run gave it 0.25 s, then killed it: its exit line, its lock's release, cut off.
    (tmp_path / "cleanup_s").write_text("1.5")
    ctrl_c(tmp_path, fake_uploader)
    with pytest.raises(KeyboardInterrupt):
        benchmark.upload(tmp_path, CFG)
    (uploader,) = fake_uploader
    assert (tmp_path / "cleaned").exists() and uploader.returncode == 130
    assert f"{HINT} {tmp_path}" in capsys.readouterr().err


def test_a_second_ctrl_c_during_the_uploaders_stop_kills_it_at_once(
    tmp_path: Path, fake_uploader: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cleanup_s").write_text("60")
    ctrl_c(tmp_path, fake_uploader, times=2)
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        benchmark.upload(tmp_path, CFG)
    (uploader,) = fake_uploader
    assert uploader.returncode == -signal.SIGKILL  # killed and reaped: no child left behind
    assert time.monotonic() - began < benchmark.UPLOADER_STOP_WAIT_S
    assert f"{HINT} {tmp_path}" in capsys.readouterr().err


def test_a_sigterm_to_the_runner_alone_is_passed_on_to_the_uploader(
    tmp_path: Path, fake_uploader: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    # `kill PID`, `timeout`, `docker stop`: only the runner gets it. The uploader uploaded on for the
    # whole wait, unaware, and was then killed.
    (tmp_path / "cleanup_s").write_text("0.5")

    def terminate_when_ready() -> None:
        deadline = time.monotonic() + 30
        while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, raise_terminated)  # the CLI's
    try:
        threading.Thread(target=terminate_when_ready, daemon=True).start()
        began = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            benchmark.upload(tmp_path, CFG)
    finally:
        signal.signal(signal.SIGTERM, previous)
    (uploader,) = fake_uploader
    assert (tmp_path / "cleaned").exists() and uploader.returncode == 130  # it stopped as on Ctrl-C
    assert time.monotonic() - began < benchmark.UPLOADER_STOP_WAIT_S
    assert f"{HINT} {tmp_path}" in capsys.readouterr().err


# ---------------------------------------------------------------- a single run, stopped after its traffic

EVALUATE_HINT = "veeksha: not evaluated (interrupted): `veeksha-run evaluate out/{name}` writes its metrics"


@pytest.mark.usefixtures("home")
def test_a_ctrl_c_during_the_evaluation_says_to_evaluate_then_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # It said only "veeksha-run: interrupted": the run, left without metrics, was uploaded by nobody.
    import veeksha.runner.evaluation.evaluate as evaluate

    def interrupted(run_dir: Path, *args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate_run", interrupted)
    assert run_main(["--wandb.enabled", "true", "--wandb.mode", "offline"]) == 130
    name = only_run_dir(tmp_path / "out").root.name
    err = capsys.readouterr().err
    assert EVALUATE_HINT.format(name=name) + f", then `veeksha-upload out/{name}`" in err


@pytest.mark.usefixtures("home")
def test_a_ctrl_c_after_the_run_is_finished_says_how_to_upload_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from veeksha.runner.run_dir import RunDir

    real_finish = RunDir.finish

    def finished_then_interrupted(self: RunDir, *args: Any, **kwargs: Any) -> None:
        real_finish(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "finish", finished_then_interrupted)
    assert run_main(["--wandb.enabled", "true", "--wandb.mode", "offline"]) == 130
    name = only_run_dir(tmp_path / "out").root.name
    assert f"{HINT} out/{name}" in capsys.readouterr().err


@pytest.mark.usefixtures("home")
def test_a_sweep_stopped_before_its_first_run_suggests_no_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # It said `veeksha-upload <sweep dir>`, which failed: with no run's config in it the uploader did not
    # know the sweep's W&B mode (offline here) and asked for an API key.
    import veeksha.runner.sweep as sweep

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_benchmark", interrupted)
    (tmp_path / "s.veeksha.yml").write_text(
        "output_dir: out\nserver: {type: simulated}\nseed: !expand [1, 2]\n"
        "wandb: {enabled: true, mode: offline}\n"
    )
    from veeksha.runner.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--config", "s.veeksha.yml"])
    assert exited.value.code == 130
    said = capsys.readouterr()
    assert "veeksha-upload" not in said.out + said.err


def test_a_run_started_with_ctrl_c_ignored_ignores_it_in_its_recording_too(tmp_path: Path) -> None:
    # A background job of a script (`veeksha-run ... &`) starts with SIGINT ignored: the Ctrl-C is the
    # script's. The run ignored it everywhere but in its recording, which it ended.
    proc = subprocess.Popen(
        [VEEKSHA_RUN, "--server.type", "simulated", "--runtime.benchmark_timeout", "3"],
        cwd=tmp_path,
        env=no_plots_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert proc.stdout is not None
    with proc.stdout:
        said = []
        for line in proc.stdout:
            said.append(line)
            if line.startswith("[ "):  # the recording goes
                os.killpg(proc.pid, signal.SIGINT)
                break
        said.append(proc.stdout.read())
    assert proc.wait(120) == 0, "".join(said)
    info = orjson.loads(only_run_dir(tmp_path / "benchmark_output").run_json.read_bytes())
    assert info["status"] == "completed", "".join(said)
