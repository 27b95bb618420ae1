"""How a driver takes stop signals: a job stopped once drains, however many of its processes got it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import orjson
import pytest

from tests.runner.helpers import read_jsonl
from tests.runner.test_crash_recovery import driver_pid, start_slow_run, wait_for_dispatches


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_one_stop_signal_to_every_process_of_the_run_drains(tmp_path: Path, sig: signal.Signals) -> None:
    """systemd (its default kill mode), Slurm's scancel and a shell's job control signal every
    process of a job at once: the driver gets the job's signal and the stop its recorder forwards.
    That is one stop, a drain: the requests in flight end as they would have, none is cancelled."""
    proc = start_slow_run(tmp_path)
    paths = wait_for_dispatches(tmp_path, at_least=10)
    driver = driver_pid(proc.pid)
    os.kill(proc.pid, sig)
    os.kill(driver, sig)
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 130, stderr
    records = read_jsonl(paths.request_records)
    assert len(records) >= 10
    assert {r["status"] for r in records} == {"success"}, {r["error_type"] for r in records}
    assert orjson.loads(paths.run_json.read_bytes())["status"] == "interrupted"
