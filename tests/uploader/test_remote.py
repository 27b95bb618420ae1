"""Asking W&B what it holds (remote.py): a busy server (429, 5xx) is asked again, within a budget.

A tiny loopback HTTP server plays W&B's GraphQL endpoint and answers from a script of statuses.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from veeksha.uploader import remote
from veeksha.uploader.probe import probe
from veeksha.uploader.remote import RemoteError, lookup_run

BUCKET = {
    "data": {"model": {"bucket": {"id": "1", "name": "r1", "displayName": "r1", "historyLineCount": 7}}}
}
VIEWER = {"data": {"viewer": {"id": "u", "username": "tester", "entity": "team"}}}


class Scripted:
    """Answers POSTs with the next status of `statuses` (the last one repeats), with `body` on 200."""

    def __init__(self, statuses: list[int], body: dict, retry_after: str | None = None) -> None:
        self.statuses, self.body, self.retry_after = statuses, body, retry_after
        self.times: list[float] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.times.append(time.monotonic())
                status = outer.statuses[min(len(outer.times), len(outer.statuses)) - 1]
                payload = json.dumps(
                    outer.body if status == 200 else {"errors": [{"message": "busy"}]}
                ).encode()
                self.send_response(status)
                if outer.retry_after is not None and status != 200:
                    self.send_header("retry-after", outer.retry_after)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def scripted() -> Iterator[type[Scripted]]:
    made: list[Scripted] = []

    def make(*args: object, **kwargs: object) -> Scripted:
        s = Scripted(*args, **kwargs)  # type: ignore[arg-type]
        threading.Thread(target=s.server.serve_forever, daemon=True).start()
        made.append(s)
        return s

    yield make  # type: ignore[misc]
    for s in made:
        s.server.shutdown()
        s.server.server_close()


def test_a_429_is_asked_again_after_its_retry_after(scripted) -> None:
    # One 429 failed the directory ("HTTP 429"), and no run was made.
    server = scripted([429, 200], BUCKET, retry_after="0.3")
    run = lookup_run(server.url, "k", "team", "proj", "r1")
    assert run is not None and run.history_lines == 7
    assert len(server.times) == 2 and server.times[1] - server.times[0] >= 0.3


def test_5xx_answers_are_asked_again_with_growing_pauses(scripted, monkeypatch) -> None:
    monkeypatch.setattr(remote, "_FIRST_PAUSE_S", 0.1)
    server = scripted([503, 502, 200], BUCKET)
    assert lookup_run(server.url, "k", "team", "proj", "r1") is not None
    gaps = [b - a for a, b in zip(server.times, server.times[1:], strict=False)]
    assert len(gaps) == 2 and gaps[0] >= 0.1 and gaps[1] >= 0.2


def test_a_server_busy_for_longer_than_the_budget_is_a_failure(scripted, monkeypatch) -> None:
    budget = 1.0
    monkeypatch.setattr(remote, "RETRY_BUDGET_S", budget)
    monkeypatch.setattr(remote, "_FIRST_PAUSE_S", 0.1)
    server = scripted([500], BUCKET)
    started = time.monotonic()
    with pytest.raises(RemoteError, match="HTTP 500"):
        lookup_run(server.url, "k", "team", "proj", "r1")
    # Asked again, but no more often than pauses of 0.1, 0.2, 0.4 s and the last one cut to the
    # budget allow (5 questions); a busy machine only makes fewer. The time bound has slack for
    # a busy machine too: it is there to catch the budget not applying at all (30 s).
    assert 2 <= len(server.times) <= 5, server.times
    assert time.monotonic() - started < budget + 2.0


def test_other_errors_are_not_asked_again(scripted) -> None:
    server = scripted([404], BUCKET)
    with pytest.raises(RemoteError, match="HTTP 404"):
        lookup_run(server.url, "k", "team", "proj", "r1")
    assert len(server.times) == 1


def test_the_probe_waits_out_a_busy_server_too(scripted) -> None:
    # A 429 on the probe marked every directory of a backfill "not uploaded".
    server = scripted([429, 200], VIEWER, retry_after="0.2")
    result = probe(server.url, "k")
    assert result.ok and result.entity == "team", result.message


def test_a_media_file_the_server_lists_counts_as_stored_whatever_its_size(scripted) -> None:
    """Real W&B may fill a file's sizeBytes after listing it: a listed file is there, even at 0 bytes."""
    files = {"edges": [{"node": {"name": "media/a.png", "sizeBytes": 0}}], "pageInfo": {}}
    server = scripted([200], {"data": {"project": {"run": {"files": files}}}})
    found = remote.stored_run_files(server.url, "k", "e", "p", "r1", ["media/a.png", "media/b.png"])
    assert found == {"media/a.png"}
