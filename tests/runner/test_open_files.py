"""The open-file limit: a simulated server raises its soft limit to the hard one (a connection is a
file), and says so once when it still runs out; `veeksha-run` raises its own, for the processes it
starts (drivers, servers) inherit it. Each test runs a real process under a low limit."""

from __future__ import annotations

import resource
import selectors
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

from tests.runner.helpers import VEEKSHA_RUN, no_plots_env

SIM_MODULE = [sys.executable, "-m", "veeksha.runner.simserver.server"]
LOW = 64
CONNECTIONS = 100
_, HARD = resource.getrlimit(resource.RLIMIT_NOFILE)


def soft_limit(soft: int, hard: int = HARD) -> Callable[[], None]:
    """A preexec_fn: the child starts with this open-file limit."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextmanager
def server_under(limit: Callable[[], None]) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """A simulated server process started under `limit`; yields its port and the process."""
    cfg = orjson.dumps({"decode_step_base": 0.1, "decode_step_per_seq": 0.0}).decode()
    proc = subprocess.Popen(
        [*SIM_MODULE, "--config-json", cfg],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("VEEKSHA_SIMULATED_SERVER_LISTENING "), line
        yield int(line.split()[2]), proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def concurrent_streams(port: int, n: int) -> list[bytes]:
    """n requests at once, each on its own connection (20 tokens at 100 ms a step: two seconds each,
    so all n are open together); every connection's bytes, read until the server closes it."""
    body = orjson.dumps(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 20,
            "ignore_eos": True,
            "stream": True,
        }
    )
    request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
    request += b"content-length: %d\r\n\r\n%b" % (len(body), body)
    sel = selectors.DefaultSelector()
    received: dict[socket.socket, bytes] = {}
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(request)
        sock.setblocking(False)
        received[sock] = b""
        sel.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + 30
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            received[sock] += data
            if not data:
                sel.unregister(sock)
    sel.close()
    for sock in received:
        sock.close()
    return list(received.values())


def test_the_server_raises_a_low_soft_limit_and_answers_every_connection() -> None:
    # Under `ulimit -n 64`, 51 of 100 connections were accepted and closed at once (no byte, no log).
    with server_under(soft_limit(LOW)) as (port, _):
        replies = concurrent_streams(port, CONNECTIONS)
    unanswered = [r for r in replies if b"data: [DONE]" not in r]
    assert not unanswered, f"{len(unanswered)} of {CONNECTIONS} got no complete answer"


def test_a_server_that_cannot_raise_it_says_so_once_when_it_runs_out() -> None:
    with server_under(soft_limit(LOW, LOW)) as (port, proc):
        replies = concurrent_streams(port, CONNECTIONS)
        proc.terminate()
        assert proc.stderr is not None
        stderr = proc.stderr.read()
    assert sum(b"data: [DONE]" not in r for r in replies) > 0  # it did run out
    said = [line for line in stderr.splitlines() if "open-file limit" in line]
    assert len(said) == 1, stderr
    assert str(LOW) in said[0] and "ulimit -n" in said[0]


def test_veeksha_run_raises_its_limit_for_the_processes_it_starts(tmp_path: Path) -> None:
    # The server (and the drivers) inherit veeksha-run's limit: one with a low soft limit ran out of
    # connections above ~1000 sessions. The "server" here only writes the limit it got, then exits.
    report = tmp_path / "limit"
    limit = "resource.getrlimit(resource.RLIMIT_NOFILE)[0]"
    script = f"import resource; open({str(report)!r}, 'w').write(str({limit}))"
    (tmp_path / "c.veeksha.yml").write_text(
        textwrap.dedent(
            f"""
            output_dir: out
            server:
              type: command
              command: [{sys.executable}, -c, "{script}"]
              ready_url: http://127.0.0.1:1/health
              ready_timeout: 2  # it exits 0 without serving: a launcher may, so it is waited for
            runtime: {{max_sessions: 1}}
            """
        )
    )
    subprocess.run(
        [VEEKSHA_RUN, "--config", "c.veeksha.yml"],
        cwd=tmp_path,
        env=no_plots_env(),
        capture_output=True,
        timeout=120,
        preexec_fn=soft_limit(LOW),
    )
    assert int(report.read_text()) == HARD
