"""How a driver takes stop signals: a job stopped once drains, however many of its processes got it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import orjson

from tests.runner.helpers import read_jsonl
from tests.runner.test_crash_recovery import driver_pid, start_slow_run, wait_for_dispatches


def test_one_sigterm_to_every_process_of_the_run_drains(tmp_path: Path) -> None:
    """systemd (its default kill mode) and Slurm's scancel signal every process of a job at once: the
    driver gets the job's SIGTERM and the SIGINT its recorder forwards. That is one stop, a drain:
    the requests in flight end as they would have, none is cancelled."""
    proc = start_slow_run(tmp_path)
    paths = wait_for_dispatches(tmp_path, at_least=10)
    driver = driver_pid(proc.pid)
    os.kill(proc.pid, signal.SIGTERM)
    os.kill(driver, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 130, stderr
    records = read_jsonl(paths.request_records)
    assert len(records) >= 10
    assert {r["status"] for r in records} == {"success"}, {r["error_type"] for r in records}
    assert orjson.loads(paths.run_json.read_bytes())["status"] == "interrupted"
