"""Running `veeksha-run` as users do: a real process, real loopback HTTP, real files."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
from veeksha.runner.evaluation.evaluate import NO_PLOTS_ENV
from veeksha.shared.paths import RunPaths

VEEKSHA_RUN = str(Path(sys.executable).parent / "veeksha-run")


def no_plots_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ plus `env`, with the PNG plots switched off (~1 s per run) for tests that ignore them."""
    return {**os.environ, NO_PLOTS_ENV: "1", **(env or {})}


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 180, plots: bool = False
):
    """`veeksha-run ARGS`; without `plots` the run writes every file but the distribution PNGs."""
    full_env = {**os.environ, **(env or {})} if plots else no_plots_env(env)
    return subprocess.run(
        [VEEKSHA_RUN, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def only_run_dir(output_dir: Path) -> RunPaths:
    dirs = [p for p in output_dir.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return RunPaths(dirs[0])


def read_jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def all_text_under(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A loopback HTTP server of `handler` in a thread; yields its `/v1` base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class CountingStreamHandler(BaseHTTPRequestHandler):
    """Streams each chat request 20 tokens, 50 ms apart (one second of work), and counts the requests
    that reached it: what a run's records must add up to, whatever died."""

    protocol_version = "HTTP/1.1"
    received = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with CountingStreamHandler.lock:
            CountingStreamHandler.received += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for k in range(20):
                time.sleep(0.05)
                finish = "length" if k == 19 else None
                delta = {"choices": [{"index": 0, "delta": {"content": " w"}, "finish_reason": finish}]}
                self._chunk(b"data: " + orjson.dumps(delta) + b"\n\n")
            self._chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away (cancelled)
            self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


def received_when_settled() -> int:
    """The server's count once it has stopped growing (the last requests' lines are being read)."""
    count = -1
    while count != CountingStreamHandler.received:
        count = CountingStreamHandler.received
        time.sleep(0.5)
    return count
