"""A capacity search's own upload (its W&B summary run, the `best` tag) on every way it ends: also
without a verdict, failed, or interrupted during an attempt's traffic, once its results have their
final status. Ctrl-C, as for a sweep: during an attempt's traffic it ends that attempt (evaluated and
uploaded like any run) and the search, which uploads; anywhere else (a server's start or stop, an
evaluation, an upload) nothing more is uploaded. The retry command is said whenever it is not done.

Real searches against the simulated server, W&B offline in a private home (the upload writes an
offline run and the uploader's marker, wandb_run.json, into the folder)."""

from __future__ import annotations

import io
import itertools
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import veeksha.runner.capacity_search as capacity_search
import yaml
from veeksha.runner.evaluation.evaluate import NO_PLOTS_ENV
from veeksha.runner.server_launcher import ServerHandle
from veeksha.shared.jsonio import read_json
from veeksha.shared.paths import CAPSEARCH_RESULTS, WANDB_RUN_JSON

from tests.runner.helpers import VEEKSHA_RUN
from tests.runner.test_capacity_search import (
    evaluate_cli,
    evaluation_error,
    interrupted,
    run_search_with_fault,
    write_search,
)
from tests.uploader.conftest import Home, make_home, upload

WRITING = "veeksha: writing an offline W&B run"


def write_uploading_search(tmp: Path, **keys: Any) -> Path:
    """write_search's config with W&B enabled, offline."""
    path = write_search(tmp, **keys)
    config = yaml.safe_load(path.read_text())
    config["benchmark_config"]["wandb"] = {"enabled": True, "mode": "offline", "project": "capsearch"}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    """A private home for the SDK, in this process's environment (the runner's uploader inherits it)."""
    home = make_home(tmp_path / "home")
    for key in [k for k in os.environ if k.startswith(("WANDB_", "OPENAI_"))]:
        monkeypatch.delenv(key)
    for key, value in home.env().items():
        monkeypatch.setenv(key, value)
    yield home


def uploaded(root: Path) -> bool:
    return (root / WANDB_RUN_JSON).is_file()


def says_to_upload(said: str, root: Path) -> int | None:
    """Where `said` says `veeksha-upload ROOT` (the search's, not an attempt's `ROOT/runs/...`)."""
    found = re.search(rf"veeksha-upload {re.escape(str(root))}(?![/\w-])", said)
    return found.start() if found else None


def the_search(out: Path) -> Path:
    (root,) = out.iterdir()
    return root


# ---------------------------------------------------------------- in this process


def test_a_search_without_a_verdict_says_to_upload_after_evaluate(tmp_path: Path, home: Home) -> None:
    """The uploader skips the summary while an attempt has no metrics: the search says what finishes
    it, then the upload, and doing so uploads it."""
    found = run_search_with_fault(write_uploading_search(tmp_path), 0, evaluation_error)
    assert found.exit_code == 1 and found.results["stop_reason"] == "evaluation_failed"
    evaluate = found.stdout.index(f"veeksha-run evaluate {found.attempt_dir(0)}")
    upload_at = says_to_upload(found.stdout, found.root)
    assert upload_at is not None and upload_at > evaluate, found.stdout
    assert not uploaded(found.root)

    evaluate_cli(found.attempt_dir(0))
    done = upload([str(found.root)], home, tmp_path)
    assert done.returncode == 0 and uploaded(found.root), done.stdout + done.stderr


def test_a_search_stopped_by_an_attempt_that_sent_nothing_is_uploaded(tmp_path: Path, home: Home) -> None:
    config = write_uploading_search(tmp_path, start_value=0.5, max_value=2, precision=1)
    found = run_search_with_fault(config, -1, evaluation_error)  # (no fault: its evaluation as it is)
    assert found.exit_code == 1 and found.results["history"][0]["verdict"] == "unknown"
    assert uploaded(found.root)


def test_a_search_interrupted_in_an_evaluation_is_not_uploaded_and_says_what_finishes_it(
    tmp_path: Path, home: Home, capfd: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C outside an attempt's traffic: no upload starts (it uploaded the search); the search names
    what finishes the attempt (`evaluate`), then how to upload it."""
    found = run_search_with_fault(write_uploading_search(tmp_path), 1, interrupted)
    assert found.exit_code == 130 and found.results["status"] == "interrupted"
    assert found.stdout.count(WRITING) == 1, found.stdout  # attempt 0's own, before the Ctrl-C
    said = capfd.readouterr().err
    evaluate = said.find(f"`veeksha-run evaluate {found.root}`")
    upload_at = says_to_upload(said, found.root)
    assert evaluate >= 0 and upload_at is not None and upload_at > evaluate, said
    assert not uploaded(found.root)


def ctrl_c_as_a_server_stops(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    """Ctrl-C once the `at`-th server (0-based) has stopped: its attempt was recorded and evaluated."""
    real = ServerHandle.stop
    calls = itertools.count()

    def stop(handle: ServerHandle, *args: Any, **kwargs: Any) -> None:
        real(handle, *args, **kwargs)
        if next(calls) == at:
            raise KeyboardInterrupt

    monkeypatch.setattr(ServerHandle, "stop", stop)


def test_a_search_interrupted_while_a_server_stops_is_not_uploaded(
    tmp_path: Path, home: Home, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Its attempt was evaluated: the search said "an upload was interrupted" and uploaded nothing.
    Now it says only how to upload it, as for any Ctrl-C outside an attempt's traffic."""
    ctrl_c_as_a_server_stops(monkeypatch, at=1)
    found = run_search_with_fault(write_uploading_search(tmp_path), -1, evaluation_error)  # (no fault)
    assert found.exit_code == 130 and found.results["status"] == "interrupted"
    assert [h["verdict"] for h in found.results["history"]] == ["pass", "pass"]  # both evaluated
    assert found.stdout.count(WRITING) == 1, found.stdout  # attempt 0's; none after the Ctrl-C
    said = capfd.readouterr().err
    assert "upload was interrupted" not in said, said
    assert says_to_upload(said, found.root) is not None, said
    assert not uploaded(found.root)


class ServerDidNotStart(RuntimeError):
    pass


def failing_second_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second attempt cannot run (as a server that does not start): the search raises."""
    real = capacity_search.run_benchmark
    calls = iter(range(100))

    def run_benchmark(*args: Any, **kwargs: Any) -> Any:
        if next(calls) == 1:
            raise ServerDidNotStart("its server did not start")
        return real(*args, **kwargs)

    monkeypatch.setattr(capacity_search, "run_benchmark", run_benchmark)


def run_failing_search(config: Path) -> tuple[str, Path]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(ServerDidNotStart):
        capacity_search.run_capacity_search(config, [])
    return out.getvalue() + err.getvalue(), the_search(config.parent / "out")


def test_a_failed_search_is_uploaded_and_still_raises_its_error(
    tmp_path: Path, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(NO_PLOTS_ENV, "1")
    failing_second_attempt(monkeypatch)
    _, root = run_failing_search(write_uploading_search(tmp_path))
    assert read_json(root / CAPSEARCH_RESULTS)["status"] == "failed"
    assert uploaded(root)


def test_an_upload_that_raises_does_not_hide_the_searchs_error(
    tmp_path: Path, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(NO_PLOTS_ENV, "1")
    failing_second_attempt(monkeypatch)

    def broken_upload(run_dir: Path, cfg: Any) -> bool:
        if run_dir.name.startswith("capsearch-"):
            raise RuntimeError("the uploader is broken")
        return True

    monkeypatch.setattr(capacity_search, "upload", broken_upload)
    said, root = run_failing_search(write_uploading_search(tmp_path))  # raises ServerDidNotStart
    assert says_to_upload(said, root) is not None and "the uploader is broken" in said


# ---------------------------------------------------------------- `veeksha-run capacity-search`, Ctrl-C'd


def start_search(tmp: Path, home: Home, **keys: Any) -> subprocess.Popen[str]:
    write_uploading_search(tmp, **keys)
    return subprocess.Popen(
        [VEEKSHA_RUN, "capacity-search", "--config", "search.veeksha.yml"],
        cwd=tmp,
        env=home.env({NO_PLOTS_ENV: "1"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: Ctrl-C reaches the whole of it, as in a terminal
    )


def ctrl_c_after(proc: subprocess.Popen[str], line_start: str, nth: int = 1, wait_s: float = 0.0) -> str:
    """Ctrl-C once the `nth` line starting with `line_start` is out (and `wait_s` more); all it said."""
    assert proc.stdout is not None
    said: list[str] = []
    try:
        for line in proc.stdout:
            said.append(line)
            if line.startswith(line_start) and (nth := nth - 1) == 0:
                break
        assert nth == 0, "".join(said)
        time.sleep(wait_s)
        os.killpg(proc.pid, signal.SIGINT)
        said.append(proc.stdout.read())
        proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
    return "".join(said)


def test_a_search_interrupted_in_an_attempt_is_uploaded(tmp_path: Path, home: Home) -> None:
    proc = start_search(tmp_path, home, runtime={"benchmark_timeout": 3})
    said = ctrl_c_after(proc, "veeksha: run directory", wait_s=1.5)  # while the attempt sends
    root = the_search(tmp_path / "out")
    assert proc.returncode == 130, said
    results = read_json(root / CAPSEARCH_RESULTS)
    assert results["status"] == "interrupted" and results["history"][0]["status"] == "interrupted"
    assert uploaded(root), said  # the summary run, from the results' final status


@pytest.mark.parametrize(("nth", "whose"), [(1, "an attempt's"), (2, "the search's own")])
def test_an_upload_stopped_by_ctrl_c_is_not_started_again(
    tmp_path: Path, home: Home, nth: int, whose: str
) -> None:
    """Ctrl-C during an upload (`whose`): the user stopped it; the search says how to do it later."""
    proc = start_search(tmp_path, home, max_iterations=1)
    said = ctrl_c_after(proc, WRITING, nth)
    root = the_search(tmp_path / "out")
    assert proc.returncode == 130, said
    assert said.count(WRITING) == nth, said  # none started after the Ctrl-C
    assert not uploaded(root)
    assert says_to_upload(said, root) is not None, said
