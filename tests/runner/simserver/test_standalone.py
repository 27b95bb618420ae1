"""The simulated server on its own: `python -m veeksha.runner.simserver.server` (what the launcher
runs) and `veeksha-run simulate-server`. Bad input is one line and exit 2, before anything listens."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from veeksha.runner.cli import main

from tests.runner.helpers import VEEKSHA_RUN
from tests.runner.simserver.test_server import chat_body

SIM_MODULE = [sys.executable, "-m", "veeksha.runner.simserver.server"]


def one_line_refusal(proc: subprocess.CompletedProcess[str], *parts: str) -> bool:
    lines = proc.stderr.strip().splitlines()
    return proc.returncode == 2 and len(lines) == 1 and all(p in lines[0] for p in parts)


@pytest.mark.parametrize(
    ("config_json", "parts"),
    [
        ("{bad", ["--config-json", "not valid JSON"]),  # was exit 1
        ('{"host": "8.8.8.8"}', ["server.host", "8.8.8.8"]),  # was a bind traceback, exit 1
        ('{"max_batch": 3}', ["max_batch_size"]),  # the "did you mean"
    ],
)
def test_the_module_refuses_bad_input_in_one_line_with_exit_2(config_json: str, parts: list[str]) -> None:
    proc = subprocess.run(
        [*SIM_MODULE, "--config-json", config_json], capture_output=True, text=True, timeout=60
    )
    assert one_line_refusal(proc, *parts), (proc.returncode, proc.stderr)


def test_the_module_refuses_a_port_in_use_naming_the_flag() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([*SIM_MODULE, "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert one_line_refusal(proc, "--port", str(port), "in use"), (proc.returncode, proc.stderr)


@contextmanager
def simulate_server(*flags: str) -> Iterator[str]:
    """`veeksha-run simulate-server --port 0 FLAGS`; yields the URL it prints."""
    proc = subprocess.Popen(
        [VEEKSHA_RUN, "simulate-server", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("simulated server on http://"), line + proc.communicate(timeout=10)[1]
        yield line.split()[3]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_simulate_server_takes_dotted_keys_as_the_main_command_does() -> None:
    # `--precise.ttft 0.1` was refused ("did you mean 'precise'?").
    with simulate_server("--precise.ttft", "0.25", "--precise.itl", "0.001", "--max-batch-size", "3") as url:
        start = time.perf_counter()
        reply = httpx.post(
            url + "/chat/completions", json=chat_body(max_tokens=2), trust_env=False, timeout=10
        )
        elapsed = time.perf_counter() - start
        stats = httpx.get(url.removesuffix("/v1") + "/sim/stats", trust_env=False, timeout=10).json()
    assert reply.status_code == 200 and elapsed >= 0.25
    assert stats["precise_chunks"] == 2  # precise timing is on: its own stats


@pytest.fixture
def refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """`veeksha-run simulate-server ARGS` in this process: (exit code, stderr lines)."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[object, list[str]]:
        with pytest.raises(SystemExit) as exited:
            main(["simulate-server", *args])
        return exited.value.code, capsys.readouterr().err.strip().splitlines()

    return run


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (["--precise.ttfx", "0.1"], ["server.precise.ttfx", "did you mean 'ttft'"]),
        (["--precise.ttft", "-1"], ["server.precise.ttft", "-1"]),
        (["--max_batch_size.x", "1"], ["server.max_batch_size", "expected an integer"]),
        (["--precise.ttft", "--port", "1"], ["--precise.ttft needs a value"]),
        (["--max_batchsize"], ["--max_batchsize is not a known option or config key"]),
    ],
)
def test_simulate_server_refuses_bad_keys_in_one_line(refused, args: list[str], parts: list[str]) -> None:
    code, lines = refused(*args)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("veeksha-run: "), lines
    assert all(p in lines[0] for p in parts), lines
