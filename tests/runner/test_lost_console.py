"""A run needs no console: started without stdout, or with a reader of its output that goes away early
(`veeksha-run ... | head -1`), it still sends its traffic and ends with its files, as without a pipe.

Both failed the run before its first request: a closed stdout with a traceback (Python gives such a
process no sys.stdout), a reader gone with "cannot write a file in out/<run>: Broken pipe", as if the
disk had failed. Real `veeksha-run` processes, real pipes, a real shell.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import orjson

from tests.runner.helpers import VEEKSHA_RUN, no_plots_env, only_run_dir, read_jsonl

CONFIG = """
output_dir: out
server: {type: simulated}
traffic_scheduler:
  type: rate
  interval_generator: {type: poisson, arrival_rate: 20}
session_generator:
  type: synthetic
  channels: [{type: text, body_length_generator: {type: uniform, min: 50, max: 100}}]
  output_spec: {text: {output_length_generator: {type: uniform, min: 8, max: 32}}}
runtime: {benchmark_timeout: 3}
"""
A_SWEEP = CONFIG + "seed: !expand [1, 2, 3, 4]\n"


def write_config(tmp: Path, text: str = CONFIG) -> None:
    (tmp / "c.veeksha.yml").write_text(textwrap.dedent(text))


def assert_a_whole_run(out: Path) -> None:
    paths = only_run_dir(out)
    info = orjson.loads(paths.run_json.read_bytes())
    assert info["status"] == "completed" and info["finished_at"], info
    assert read_jsonl(paths.request_records), "no traffic"
    assert paths.summary_stats.is_file() and paths.health_checks_json.is_file()


def test_a_run_started_with_stdout_closed_runs_as_usual(tmp_path: Path) -> None:
    write_config(tmp_path)
    proc = subprocess.run(
        ["sh", "-c", f"exec {VEEKSHA_RUN} --config c.veeksha.yml >&-"],
        cwd=tmp_path,
        env=no_plots_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert_a_whole_run(tmp_path / "out")


def first_line_then_gone(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """`veeksha-run ARGS | head -1`: its first line read, then the pipe's only reader closed."""
    proc = subprocess.Popen(
        [VEEKSHA_RUN, *args],
        cwd=cwd,
        env=no_plots_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    with proc.stdout, proc.stderr:
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read()
    return proc.wait(timeout=120), first, err


def test_a_run_whose_output_reader_exits_after_one_line_still_runs_and_finishes(tmp_path: Path) -> None:
    write_config(tmp_path)
    code, first, err = first_line_then_gone(["--config", "c.veeksha.yml"], tmp_path)
    assert code == 0, err
    assert first.startswith("veeksha: run directory ")
    # Neither a write failure nor Python's own complaint when it flushes stdout at exit.
    assert "Broken pipe" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert_a_whole_run(tmp_path / "out")


def test_a_dry_run_whose_reader_is_gone_succeeds(tmp_path: Path) -> None:
    """`veeksha-run --dry-run | true`: the pipe has no reader by the time the list is written."""
    write_config(tmp_path, A_SWEEP)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [VEEKSHA_RUN, "--config", "c.veeksha.yml", "--dry-run"],
            cwd=tmp_path,
            env=no_plots_env(),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert not (tmp_path / "out").exists()
