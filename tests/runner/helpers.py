"""Running `veeksha-run` as users do: a real process, real loopback HTTP, real files."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
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
