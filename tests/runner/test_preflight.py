"""Before anything starts, the hosts of a user-given api_base and of a command server's ready_url
must resolve, within a bounded time."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from veeksha.runner import preflight
from veeksha.runner.preflight import check_api_base_hosts, resolve_problem
from veeksha.runner.server_launcher import start_server
from veeksha.shared.config import CommandServerConfig
from veeksha.shared.config_loader import build_benchmark_config
from veeksha.shared.errors import ConfigError, VeekshaError


def test_a_loopback_host_resolves() -> None:
    assert resolve_problem("localhost") is None


def test_a_reserved_invalid_host_does_not_resolve() -> None:
    assert "does not resolve" in (resolve_problem("nothing-here.invalid") or "")


def test_a_resolver_that_hangs_is_given_up_on(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: release.wait(10))
    monkeypatch.setattr(preflight, "RESOLVE_TIMEOUT_S", 0.2)
    started = time.monotonic()
    problem = resolve_problem("slow.example")
    release.set()
    assert (problem, time.monotonic() - started < 2) == ("did not resolve within 0.2 s", True)


def test_only_the_url_the_run_will_use_is_resolved() -> None:
    unused = build_benchmark_config(
        {"client": {"api_base": "http://replaced.invalid/v1"}, "server": {"type": "simulated"}}
    )
    used = build_benchmark_config({"client": {"api_base": "http://used.invalid/v1"}})
    check_api_base_hosts([unused])  # the simulated server's URL replaces it: nothing to resolve
    with pytest.raises(ConfigError, match=r"^config error at client\.api_base: .*'used\.invalid' does not"):
        check_api_base_hosts([used])


def test_a_command_servers_ready_url_must_resolve_too() -> None:
    """Skipped when the server section supplied the URL: a typo in ready_url's host was polled until
    ready_timeout (ten minutes by default), the server loading meanwhile."""
    cfg = build_benchmark_config(
        {
            "server": {
                "type": "command",
                "command": ["vllm"],
                "ready_url": "http://vllm-hots.invalid:8000/health",
            }
        }
    )
    with pytest.raises(ConfigError) as caught:
        check_api_base_hosts([cfg])
    assert str(caught.value).startswith(
        "config error at server.ready_url: 'http://vllm-hots.invalid:8000/health' is not allowed; "
        "its host 'vllm-hots.invalid' does not resolve"
    )


def test_the_launch_does_not_refuse_a_ready_url_resolved_only_once_the_server_runs(tmp_path: Path) -> None:
    """A Kubernetes Service or a docker network alias resolves once the command made it: the launch
    refused it. The command runs now, and the readiness timeout names the failed name lookup."""
    marker = tmp_path / "started"
    server = CommandServerConfig(
        command=[sys.executable, "-c", f"import time; open({str(marker)!r}, 'w'); time.sleep(30)"],
        ready_url="http://vllm-hots.invalid:8000/health",
        ready_timeout=1.0,
    )
    with pytest.raises(VeekshaError, match="did not manage to answer 2xx") as caught:
        start_server(server, log_path=tmp_path / "server.log")
    assert not isinstance(caught.value, ConfigError) and marker.exists()
    assert "last error: ready_url's host 'vllm-hots.invalid' does not resolve" in str(caught.value)
