"""The uploader's own questions to W&B (remote.py) use their whole retry budget, also for a server
that is down, drops the connection or stalls, and never run past the directory's deadline.

A tiny loopback HTTP server plays W&B's GraphQL endpoint: it answers 500, closes the connection
without an answer, stalls, or is not listening at all for a while. Last, real `veeksha-upload`
processes against the loopback fake W&B server (fake_wandb.py) answering 500.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from veeksha.uploader import remote
from veeksha.uploader.remote import RemoteError, committed_artifacts, lookup_run

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import Home, lines_for, online_env, upload
from tests.uploader.fake_wandb import FakeWandb

BUCKET = {
    "data": {"model": {"bucket": {"id": "1", "name": "r1", "displayName": "r1", "historyLineCount": 7}}}
}


class Flaky:
    """Answers each POST as `behave(n)` says (n counts from 1): "500", "close", "stall" or "ok"."""

    def __init__(self, behave: Callable[[int], str], port: int = 0) -> None:
        self.behave = behave
        self.times: list[float] = []
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.times.append(time.monotonic())
                how = outer.behave(len(outer.times))
                if how == "close":  # no answer at all: the client sees a dropped connection
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if how == "stall":
                    outer.release.wait(30)
                    return
                status = 200 if how == "ok" else int(how)
                payload = json.dumps(BUCKET if status == 200 else {"errors": [{"message": "busy"}]}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky() -> Iterator[Callable[..., Flaky]]:
    made: list[Flaky] = []

    def make(behave: Callable[[int], str], port: int = 0) -> Flaky:
        made.append(Flaky(behave, port))
        return made[-1]

    yield make
    for f in made:
        f.close()
    remote.set_deadline(None)


def test_constant_500s_use_the_whole_budget_not_half(flaky, monkeypatch) -> None:
    # Pauses 0.5, 1, 2 then 4 s would pass the 5 s budget: it gave up at 3.5 s, not at 5 s.
    monkeypatch.setattr(remote, "RETRY_BUDGET_S", 5.0)
    monkeypatch.setattr(remote, "_FIRST_PAUSE_S", 0.5)
    server = flaky(lambda n: "500")
    started = time.monotonic()
    with pytest.raises(RemoteError, match="HTTP 500"):
        lookup_run(server.url, "k", "team", "proj", "r1")
    took = time.monotonic() - started
    assert 4.8 <= took < 6.5, took
    assert server.times[-1] - started >= 4.8  # the last question is asked at the budget's end


def test_an_outage_of_500s_shorter_than_the_budget_is_waited_out(flaky, monkeypatch) -> None:
    monkeypatch.setattr(remote, "RETRY_BUDGET_S", 5.0)
    monkeypatch.setattr(remote, "_FIRST_PAUSE_S", 0.5)
    started = time.monotonic()
    server = flaky(lambda n: "500" if time.monotonic() - started < 4.0 else "ok")
    run = lookup_run(server.url, "k", "team", "proj", "r1")
    assert run is not None and run.history_lines == 7


def test_a_server_down_for_a_while_is_asked_again(flaky, monkeypatch) -> None:
    # Connection refused for 2 s: "asking W&B ... failed (ConnectError)" at once, the directory failed.
    monkeypatch.setattr(remote, "_FIRST_PAUSE_S", 0.3)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens on `port` now
    url = f"http://127.0.0.1:{port}"
    started: list[Flaky] = []
    timer = threading.Timer(2.0, lambda: started.append(flaky(lambda n: "ok", port=port)))
    timer.start()
    try:
        run = lookup_run(url, "k", "team", "proj", "r1")
    finally:
        timer.cancel()
    assert run is not None and run.history_lines == 7


def test_a_dropped_connection_is_asked_again(flaky, monkeypatch) -> None:
    # Right after the SDK finished: "could not confirm the upload ... (RemoteProtocolError)", exit 1.
    monkeypatch.setattr(remote, "_FIRST_PAUSE_S", 0.2)
    server = flaky(lambda n: "close" if n <= 2 else "ok")
    assert lookup_run(server.url, "k", "team", "proj", "r1") is not None
    assert len(server.times) == 3


def test_a_stalled_answer_is_asked_again(flaky, monkeypatch) -> None:
    monkeypatch.setattr(remote, "LOOKUP_TIMEOUT_S", 0.5)
    monkeypatch.setattr(remote, "_FIRST_PAUSE_S", 0.2)
    server = flaky(lambda n: "stall" if n == 1 else "ok")
    assert lookup_run(server.url, "k", "team", "proj", "r1") is not None
    assert len(server.times) == 2


def test_a_server_down_past_the_budget_fails_with_one_line_naming_the_error(flaky, monkeypatch) -> None:
    monkeypatch.setattr(remote, "RETRY_BUDGET_S", 1.5)
    monkeypatch.setattr(remote, "_FIRST_PAUSE_S", 0.2)
    server = flaky(lambda n: "close")
    started = time.monotonic()
    with pytest.raises(RemoteError) as err:
        committed_artifacts(server.url, "k", "team", "proj", "r1")
    took = time.monotonic() - started
    assert 1.4 <= took < 4, took
    message = str(err.value)
    assert "\n" not in message and "the artifacts of run r1" in message and "RemoteProtocolError" in message


def test_retries_stop_before_the_directory_deadline(flaky, monkeypatch) -> None:
    # The worker is killed at its deadline: the questions give up just before it, with their own line.
    monkeypatch.setattr(remote, "_FIRST_PAUSE_S", 0.2)
    server = flaky(lambda n: "500")
    started = time.monotonic()
    remote.set_deadline(started + 3.0)
    with pytest.raises(RemoteError, match="HTTP 500"):
        lookup_run(server.url, "k", "team", "proj", "r1")
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("status", ["401", "403", "404"])
def test_4xx_answers_are_not_asked_again(flaky, status: str) -> None:
    server = flaky(lambda n: status)
    with pytest.raises(RemoteError, match=f"HTTP {status}"):
        lookup_run(server.url, "k", "team", "proj", "r1")
    assert len(server.times) == 1


# ---- a real `veeksha-upload` against the loopback fake W&B server --------------------------------


def test_an_upload_waits_out_20_s_of_500s_from_w_and_b(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    # The run lookup gave up after 15 s of its 30 s budget: "failed ... HTTP 500", exit 1.
    run_dir = build_run(tmp_path, RunSpec(seed=31, seconds=3))
    fake_wandb.fail("500", "all")  # every GraphQL question but the login probe
    healer = threading.Timer(20.0, fake_wandb.heal)
    healer.start()
    try:
        done = upload([str(run_dir), "--mode", "online"], home, cwd=tmp_path, env=online_env(fake_wandb))
    finally:
        healer.cancel()
    assert done.returncode == 0, done.stdout + done.stderr
    assert lines_for(done.stdout, "uploaded"), done.stdout + done.stderr


def test_an_upload_stops_asking_before_its_deadline(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    # Its own line, not the deadline's kill: the retries end before the worker is killed.
    run_dir = build_run(tmp_path, RunSpec(seed=32, seconds=3))
    fake_wandb.fail("500", "all")
    started = time.monotonic()
    args = [str(run_dir), "--mode", "online", "--deadline", "15"]
    done = upload(args, home, cwd=tmp_path, env=online_env(fake_wandb))
    assert time.monotonic() - started < 25
    assert done.returncode == 1, done.stdout + done.stderr
    [line] = lines_for(done.stdout, "failed")
    assert "asking W&B" in line and "HTTP 500" in line and "deadline" not in line, line


def test_a_password_in_the_w_and_b_url_stays_out_of_the_error(flaky: Callable[..., Flaky]) -> None:
    """A W&B server behind a proxy with basic auth in its URL: the failure names the server, not
    its password."""
    server = flaky(lambda n: "401")
    url = server.url.replace("http://", "http://bu:BASEPW_LLLL5678@")
    with pytest.raises(RemoteError) as caught:
        lookup_run(url, "k", "team", "proj", "r1")
    assert "HTTP 401" in str(caught.value)
    assert "BASEPW" not in str(caught.value) and "127.0.0.1" in str(caught.value)
