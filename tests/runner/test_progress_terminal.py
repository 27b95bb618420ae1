"""The live line as a user sees it: `veeksha-run` on a real terminal (a pty of a given width)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
from pathlib import Path

from tests.runner.helpers import VEEKSHA_RUN, no_plots_env, only_run_dir, read_jsonl

REDRAW = "\r\033[K"  # what starts each redraw of the live line
LIVE = re.compile(r"^\[\s*(-?\d+\.\d)/\d+s\] sessions ")
# ~60 s requests, 20 sessions/s: every request is in flight when the timeout comes.
LONG_REQUESTS = [
    "--server.type",
    "simulated",
    "--session_generator.output_spec.text.output_length_generator",
    "{type: fixed, value: 6000}",
    "--server.decode_step_base",
    "0.01",
    "--server.max_kv_tokens",
    "1000000",
    "--traffic_scheduler.interval_generator.arrival_rate",
    "20",
    "--output_dir",
    "out",
]


def run_on_a_terminal(args: list[str], cwd: Path, columns: int) -> tuple[int, str]:
    """`veeksha-run ARGS` on a pty `columns` wide; its exit code and everything it showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in no_plots_env().items() if k not in ("COLUMNS", "LINES")}  # the pty's size
    proc = subprocess.Popen([VEEKSHA_RUN, *args], cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    shown = b""
    try:
        while True:
            if select.select([master], [], [], 120)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal is gone
                    break
                if not data:
                    break
                shown += data
            else:
                proc.kill()
                raise AssertionError(f"no output for 120 s: {shown[-2000:]!r}")
    finally:
        os.close(master)
    return proc.wait(timeout=60), shown.decode(errors="replace").replace("\r\n", "\n")


def live_lines(shown: str) -> list[str]:
    """Each drawing of the live line, in order."""
    drawn = [part.split("\n")[0] for part in shown.split(REDRAW)]
    return [line for line in drawn if LIVE.match(line)]


def test_on_an_80_column_terminal_two_drivers_redraw_one_line_ten_times_a_second(tmp_path: Path) -> None:
    # The line was ~115 characters with two drivers: it wrapped, each redraw cleared only its last
    # row, and one new line stayed on screen per redraw, 100 a second (a batch from each driver
    # every 20 ms), scrolling the "draining" note away.
    flags = ["--runtime.num_drivers", "2", "--runtime.benchmark_timeout", "3"]
    grace = ["--runtime.post_timeout_grace_seconds", "1"]
    code, shown = run_on_a_terminal([*LONG_REQUESTS, *flags, *grace], tmp_path, columns=80)

    assert code == 1, shown  # every request cancelled: a failed run
    lines = live_lines(shown)
    assert lines and all(len(line) <= 79 for line in lines), max(lines, key=len)
    last_elapsed = float(LIVE.match(lines[-1]).group(1))  # type: ignore[union-attr]
    assert len(lines) <= 10 * last_elapsed + 3, (len(lines), last_elapsed)
    assert any("draining" in line for line in shown.split("\n"))


def test_the_last_live_line_counts_requests_cancelled_at_shutdown_as_the_summary_does(tmp_path: Path) -> None:
    # They were counted as failed there, while the summary said "0 errors, N cancelled".
    flags = ["--runtime.benchmark_timeout", "2", "--runtime.post_timeout_grace_seconds", "0.5"]
    code, shown = run_on_a_terminal([*LONG_REQUESTS, *flags], tmp_path, columns=250)

    assert code == 1, shown
    records = read_jsonl(only_run_dir(tmp_path / "out").request_records)
    assert records and {r["status"] for r in records} == {"cancelled"}
    n = len(records)
    assert f"every request failed (0 errors, {n} cancelled)" in shown
    assert f"requests {n} sent / 0 ok / 0 failed / {n} cancelled  in flight 0" in live_lines(shown)[-1]
