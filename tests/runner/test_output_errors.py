"""When the output directory cannot be written: one line naming the path (and the errno once running)."""

from __future__ import annotations

import os
import resource
import socket
import stat
import subprocess
import time
from pathlib import Path

import orjson
from veeksha.shared.jsonio import FILE_MODE

from tests.runner.helpers import VEEKSHA_RUN, no_plots_env, only_run_dir, run_cli

QUICK = [
    "--server.type",
    "simulated",
    "--traffic_scheduler.interval_generator.arrival_rate",
    "50",
    "--runtime.benchmark_timeout",
    "15",
]


def test_an_output_directory_that_cannot_be_made_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    """Found from the config, before anything starts: a config error (exit 2), also for --dry-run."""
    (tmp_path / "taken").write_text("a file where the output directory should go")

    proc = run_cli([*QUICK, "--output_dir", "taken/runs"], cwd=tmp_path)

    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line == (
        "veeksha-run: config error at output_dir: taken/runs cannot be made: taken is not a directory; "
        "choose another output_dir"
    )
    assert "run directory" not in proc.stdout  # nothing was started


def test_a_full_disk_mid_run_ends_in_one_line_and_a_consistent_run_json(tmp_path: Path) -> None:
    def small_files() -> None:  # every file this run writes may hold 256 KiB, then writes fail
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))

    proc = subprocess.run(
        [VEEKSHA_RUN, *QUICK, "--output_dir", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=small_files,
    )

    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()[-1:]
    assert line.startswith("veeksha-run: cannot write ") and "[Errno 27] File too large" in line
    assert line.endswith("free space, then `veeksha-run evaluate RUN_DIR` finishes the run from its records")
    assert "request_level_metrics.jsonl" in line
    info = orjson.loads(only_run_dir(tmp_path / "out").run_json.read_bytes())  # whole, parseable
    assert info["status"] in ("running", "failed")


def test_output_files_get_the_users_umask(tmp_path: Path) -> None:
    proc = run_cli([*QUICK[:4], "--runtime.benchmark_timeout", "2", "--output_dir", "out"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    root = only_run_dir(tmp_path / "out").root
    modes = {
        p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()
    }
    assert modes and set(modes.values()) == {FILE_MODE}, modes
    assert FILE_MODE == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_run_whose_evaluation_fails_exits_1_and_says_how_to_retry(tmp_path: Path) -> None:
    # A directory where the evaluation's first file goes: writing it fails (EISDIR) as a full disk would.
    proc = subprocess.Popen(
        [VEEKSHA_RUN, *QUICK[:-1], "3", "--output_dir", "out"],
        cwd=tmp_path,
        env=no_plots_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()):
        assert time.monotonic() < deadline, "the run directory never appeared"
        time.sleep(0.05)
    paths = only_run_dir(tmp_path / "out")
    paths.summary_stats.mkdir(parents=True)
    _, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 1
    assert "evaluation failed: IsADirectoryError" in stderr and "rerun `veeksha-run evaluate" in stderr
    info = orjson.loads(paths.run_json.read_bytes())
    # The run completed; its metrics are missing: no finished_at, so no uploader takes it yet.
    assert (info["status"], info["error"], info["finished_at"]) == ("completed", None, None)
    assert info["evaluation_error"].startswith("evaluation failed: IsADirectoryError")
    assert paths.request_records.stat().st_size > 0  # the records are safe

    paths.summary_stats.rmdir()  # the space is back: evaluate finishes the directory
    again = run_cli(["evaluate", str(paths.root)], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    info = orjson.loads(paths.run_json.read_bytes())
    assert info["status"] == "completed" and info["finished_at"] and "evaluation_error" not in info
    assert paths.summary_stats.is_file()


def test_an_output_directory_that_is_a_dangling_link_is_a_config_error(tmp_path: Path) -> None:
    # It passed the check and failed once the server ran: "[Errno 17] File exists", exit 1.
    (tmp_path / "runs").symlink_to(tmp_path / "gone")
    proc = run_cli([*QUICK, "--output_dir", "runs"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "config error at output_dir" in line and "which does not exist" in line


def test_a_simulated_server_port_in_use_is_a_config_error_before_any_directory(tmp_path: Path) -> None:
    # The server died with a 30-line traceback (exit 1), after the output directory was made.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = run_cli([*QUICK, "--server.port", str(port), "--output_dir", "out/deep"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert f"config error at server.port: cannot listen on 127.0.0.1:{port}" in line
    assert not (tmp_path / "out").exists()
