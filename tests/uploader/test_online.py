"""Online uploads when W&B cannot be used: fail fast with one line, or fall back to offline.

Only loopback addresses: a closed port (unreachable), a port that accepts and never answers, and a
tiny real HTTP server that rejects the key. There is no W&B server here, so a successful online upload
is not tested (see docs/uploader.md).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from veeksha.uploader.probe import probe

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import Home, lines_for, upload
from tests.uploader.wandb_records import offline_run_dirs

KEY = "k" * 40


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return build_run(tmp_path, RunSpec(seed=3, seconds=2))


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


# What a server that is not W&B (a wrong base URL, a proxy's page) may answer 200 with, by path.
NOT_W_AND_B = {
    "/list/graphql": [],
    "/viewer-text/graphql": {"data": {"viewer": "x"}},
    "/data-list/graphql": {"data": []},
}


class _Reject(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/anon/graphql":
            body = json.dumps({"data": {"viewer": None}}).encode()
            self.send_response(200)
        elif self.path in NOT_W_AND_B:
            body = json.dumps(NOT_W_AND_B[self.path]).encode()
            self.send_response(200)
        else:
            body = b'{"errors": [{"message": "unauthorized"}]}'
            self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def rejecting_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Reject)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def assert_nothing_written(run_dir: Path) -> None:
    assert not (run_dir / "wandb_run.json").exists()
    assert not offline_run_dirs(run_dir)


def test_unreachable_server_fails_fast_with_one_line(run_dir: Path, home: Home) -> None:
    env = {"WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}", "WANDB_API_KEY": KEY}
    start = time.monotonic()
    result = upload([str(run_dir)], home, cwd=run_dir.parent, env=env, timeout=30)
    elapsed = time.monotonic() - start
    assert result.returncode == 1
    assert elapsed < 10, elapsed
    (line,) = result.stderr.strip().splitlines()
    assert "unreachable" in line and "--fallback-offline" in line
    assert KEY not in result.stdout + result.stderr
    assert_nothing_written(run_dir)


def test_server_that_never_answers_fails_within_ten_seconds(
    run_dir: Path, home: Home, silent_port: int
) -> None:
    env = {"WANDB_BASE_URL": f"http://127.0.0.1:{silent_port}", "WANDB_API_KEY": KEY}
    start = time.monotonic()
    result = upload([str(run_dir)], home, cwd=run_dir.parent, env=env, timeout=30)
    assert result.returncode == 1
    assert time.monotonic() - start < 10
    assert "did not answer" in result.stderr
    assert_nothing_written(run_dir)


def test_rejected_key_and_missing_key_are_one_clear_line(
    run_dir: Path, home: Home, rejecting_server: str
) -> None:
    rejected = upload([str(run_dir), "--base-url", rejecting_server, "--api-key", KEY], home, cwd=run_dir)
    assert rejected.returncode == 1
    (line,) = rejected.stderr.strip().splitlines()
    assert "rejected the API key (HTTP 401)" in line and KEY not in line

    anon = upload(
        [str(run_dir), "--base-url", f"{rejecting_server}/anon"],
        home,
        cwd=run_dir,
        env={"WANDB_API_KEY": KEY},
    )
    assert anon.returncode == 1 and "did not accept the API key" in anon.stderr

    no_key = upload([str(run_dir), "--base-url", rejecting_server], home, cwd=run_dir)
    assert no_key.returncode == 1
    assert "no W&B API key" in no_key.stderr and "WANDB_API_KEY" in no_key.stderr
    assert_nothing_written(run_dir)


@pytest.mark.parametrize("path", sorted(NOT_W_AND_B))
def test_a_server_answering_json_that_is_not_w_and_bs_is_one_clear_line(
    run_dir: Path, home: Home, rejecting_server: str, path: str
) -> None:
    base_url = rejecting_server + path.removesuffix("/graphql")
    result = upload([str(run_dir)], home, cwd=run_dir, env={"WANDB_BASE_URL": base_url, "WANDB_API_KEY": KEY})
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"W&B at {base_url} sent an answer that is not W&B's" in line and "Traceback" not in line
    assert_nothing_written(run_dir)


def test_fallback_offline_writes_the_offline_run_instead(run_dir: Path, home: Home) -> None:
    env = {"WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}", "WANDB_API_KEY": KEY}
    result = upload([str(run_dir), "--fallback-offline"], home, cwd=run_dir.parent, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "writing offline runs instead" in result.stderr
    assert len(lines_for(result.stdout, "uploaded")) == 1
    assert len(offline_run_dirs(run_dir)) == 1
    marker = json.loads((run_dir / "wandb_run.json").read_text())
    assert marker["mode"] == "offline"


def test_probe_reports_a_closed_port_quickly() -> None:
    start = time.monotonic()
    result = probe(f"http://127.0.0.1:{closed_port()}", KEY, timeout=2.0)
    assert not result.ok and "unreachable" in result.message
    assert time.monotonic() - start < 2.5


def test_the_probe_never_shows_a_key_in_the_servers_url() -> None:
    result = probe(f"http://user:SEKRETKEY123@127.0.0.1:{closed_port()}", KEY, timeout=2.0)
    assert not result.ok and "unreachable" in result.message
    assert "SEKRETKEY123" not in result.message and "127.0.0.1" in result.message


def test_fallback_offline_does_not_wait_at_exit(run_dir: Path, home: Home, silent_port: int) -> None:
    """The SDK's own telemetry used to probe the environment's W&B host at exit (10 s timeout) even for
    an offline run: with WANDB_BASE_URL on a host that never answers, every upload waited 10 s more."""
    env = {"WANDB_BASE_URL": f"http://127.0.0.1:{silent_port}", "WANDB_API_KEY": KEY}
    args = [str(run_dir), "--fallback-offline", "--base-url", "http://127.0.0.1:9"]
    start = time.monotonic()
    result = upload(args, home, cwd=run_dir.parent, env=env)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stdout + result.stderr
    assert "writing offline runs instead" in result.stderr
    assert elapsed < 8, f"{elapsed:.1f} s"
