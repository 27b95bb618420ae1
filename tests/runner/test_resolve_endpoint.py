"""Resolving the endpoint: a new config with client.api_base and client.model filled, the original
untouched; the /models probe is joined like the request URL and carries the real key."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from veeksha.runner.benchmark import resolve_endpoint
from veeksha.shared.config import BenchmarkConfig, ClientConfig
from veeksha.shared.errors import ConfigError

from tests.runner.helpers import run_cli

KEY = "sk-probe-secret-8080"


class ModelsServer(ThreadingHTTPServer):
    models: tuple[str, ...] = ("only-model",)
    body: object = None  # when set, the JSON answered instead of the model list
    seen: list[tuple[str, str]]  # (path, Authorization header) of each request
    seen_api_key_header: list[str | None]


class Handler(BaseHTTPRequestHandler):
    server: ModelsServer

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization", "")))
        self.server.seen_api_key_header.append(self.headers.get("X-API-Key"))
        answer = (
            self.server.body
            if self.server.body is not None
            else {"data": [{"id": m} for m in self.server.models]}
        )
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def models_server() -> Iterator[ModelsServer]:
    server = ModelsServer(("127.0.0.1", 0), Handler)
    server.seen = []
    server.seen_api_key_header = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def base_of(server: ModelsServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1?api-version=2024"


def test_the_model_comes_from_the_probe_into_a_new_config(models_server: ModelsServer) -> None:
    cfg = BenchmarkConfig(client=ClientConfig(api_base=base_of(models_server), api_key=KEY))  # type: ignore[arg-type]
    resolved = resolve_endpoint(cfg, None)
    assert resolved.client.model == "only-model"
    assert cfg.client.model is None  # the given config is unchanged (and frozen)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.client.model = "x"  # type: ignore[misc]
    # One URL join for requests and the probe: the query string stays at the end.
    assert models_server.seen == [("/v1/models?api-version=2024", f"Bearer {KEY}")]


def test_a_server_url_replaces_the_client_one(models_server: ModelsServer) -> None:
    cfg = BenchmarkConfig(client=ClientConfig(api_base="http://unused.invalid/v1", model="m"))
    resolved = resolve_endpoint(cfg, base_of(models_server))
    assert (resolved.client.api_base, resolved.client.model) == (base_of(models_server), "m")
    assert cfg.client.api_base == "http://unused.invalid/v1"
    assert models_server.seen == []  # the model was given: no probe


def test_several_models_need_client_model(models_server: ModelsServer) -> None:
    models_server.models = ("a", "b")
    cfg = BenchmarkConfig(client=ClientConfig(api_base=base_of(models_server)))
    with pytest.raises(ConfigError, match="lists 2 models"):
        resolve_endpoint(cfg, None)


def test_no_api_base_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"client\.api_base: not set"):
        resolve_endpoint(BenchmarkConfig(), None)


def test_the_model_probe_authenticates_as_the_requests_do(models_server: ModelsServer) -> None:
    # A gateway that takes its key in a header of its own, not as a bearer token.
    client = ClientConfig(api_base=base_of(models_server), headers={"X-API-Key": "gw-key-1"})
    assert resolve_endpoint(BenchmarkConfig(client=client), None).client.model == "only-model"
    assert models_server.seen_api_key_header == ["gw-key-1"]


@pytest.mark.parametrize("answer", [["only-model"], None, "text"])
def test_a_model_list_that_is_not_an_object_is_a_one_line_config_error(
    models_server: ModelsServer, answer: object
) -> None:
    models_server.body = answer if answer is not None else 0  # JSON null would mean "not set"
    with pytest.raises(ConfigError, match="did not list models") as raised:
        resolve_endpoint(BenchmarkConfig(client=ClientConfig(api_base=base_of(models_server))), None)
    assert "\n" not in str(raised.value)


def test_a_model_the_endpoint_cannot_name_is_refused_before_the_output_directory_is_made(
    models_server: ModelsServer, tmp_path: Path
) -> None:
    """No server to start: the /models lookup comes before anything is made (a command server must
    start first, so its lookup cannot)."""
    models_server.models = ("a", "b")
    base = f"http://127.0.0.1:{models_server.server_address[1]}/v1"
    flags = ["--client.api_base", base, "--runtime.max_requests", "1", "--output_dir", "out/deep"]
    proc = run_cli(flags, cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "config error at client.model: not set, and the server lists 2 models (a, b)" in line
    assert not (tmp_path / "out").exists()
