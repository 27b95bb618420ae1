"""Checks that depend on this machine, made before a server starts or a run directory exists.

The config loader checks what the text says (shared/config_checks.py). Whether the host in
`client.api_base` resolves depends on where the run happens, so it is checked here, as are the hosts
of a command server's `ready_url` and `api_base` (a ready_url that never resolves was polled until
`ready_timeout`, ten minutes by default). The check runs once per distinct host, and it is bounded in
time: a slow resolver cannot stall the run.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from urllib.parse import urlsplit

from veeksha.shared.config import BenchmarkConfig, CommandServerConfig, SimulatedServerConfig
from veeksha.shared.config_checks import ray_host_port, uses_client_api_base
from veeksha.shared.errors import ConfigError
from veeksha.shared.redact import url_for_message

RESOLVE_TIMEOUT_S = 5.0


def check_hosts(configs: Iterable[BenchmarkConfig], prefix: str = "") -> None:
    """ConfigError when client.api_base names a host that does not resolve, or runtime.ray_address
    a cluster that cannot be reached."""
    configs = list(configs)
    check_api_base_hosts(configs, prefix)
    for address in dict.fromkeys(c.runtime.ray_address for c in configs):
        if address is not None and address != "auto":
            check_ray_address(address, prefix)


def check_ray_address(address: str, prefix: str = "") -> None:
    """A refused port or an unknown host fails here at once, with the reason (Ray itself would
    retry for minutes)."""
    host_port = ray_host_port(address)
    assert host_port is not None, "checked when the config was built"
    try:
        socket.create_connection(host_port, timeout=RESOLVE_TIMEOUT_S).close()
    except OSError as e:
        raise ConfigError(
            f"config error at {prefix}runtime.ray_address: cannot reach the Ray cluster at {address!r} "
            f"({e.strerror or e}); start one (`ray start --head`) or fix the address"
        ) from None


def check_api_base_hosts(configs: Iterable[BenchmarkConfig], prefix: str = "") -> None:
    """ConfigError when a user-given client.api_base, or a command server's ready_url or api_base,
    names a host that does not resolve."""
    checked: set[str] = set()
    for cfg in configs:
        urls = server_urls(cfg.server)
        if cfg.client.api_base and uses_client_api_base(cfg):  # else unset (reported later), or
            urls.append(("client.api_base", cfg.client.api_base))  # the server section supplies it
        for key, url in urls:
            _check_host(f"{prefix}{key}", url, checked)


def server_urls(server: SimulatedServerConfig | CommandServerConfig | None) -> list[tuple[str, str]]:
    """(key path, URL) of each URL a command server section gives."""
    if not isinstance(server, CommandServerConfig):
        return []
    urls = [("server.ready_url", server.ready_url)] if server.ready_url else []
    return urls + ([("server.api_base", server.api_base)] if server.api_base else [])


def _check_host(key: str, url: str, checked: set[str]) -> None:
    """ConfigError naming `key` when the host of `url` does not resolve; each host checked once."""
    host = urlsplit(url).hostname or ""
    if host in checked:
        return
    checked.add(host)
    problem = resolve_problem(host)
    if problem:
        raise ConfigError(
            f"config error at {key}: {url_for_message(url)!r} is not allowed; its host {host!r} "
            f"{problem}; give a host this machine can reach"
        )


def resolve_problem(host: str) -> str | None:
    """Why `host` does not resolve, or None when it does. getaddrinfo has no timeout of its own,
    so it runs in a daemon thread that is left behind if it takes too long."""
    outcome: list[str | None] = []

    def resolve() -> None:
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            outcome.append(None)
        except (OSError, UnicodeError) as e:  # UnicodeError: a label IDNA cannot encode
            outcome.append(f"does not resolve ({getattr(e, 'strerror', None) or e})")

    thread = threading.Thread(target=resolve, name="veeksha-resolve", daemon=True)
    thread.start()
    thread.join(RESOLVE_TIMEOUT_S)
    return outcome[0] if outcome else f"did not resolve within {RESOLVE_TIMEOUT_S:g} s"
