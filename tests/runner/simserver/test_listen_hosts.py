"""Where the simulated server listens, and where its clients are sent: every interface (`0.0.0.0`,
`::`, `""`) is reached over a loopback address of the same family, written as a URL host."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from veeksha.runner.server_launcher import check_server_port, start_server
from veeksha.runner.simserver.server import listening_address, start_simulated_server
from veeksha.shared.config import SimulatedServerConfig

from tests.runner.simserver.test_standalone import simulate_server


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")


@pytest.mark.parametrize(
    ("bind", "client_host"),
    [
        ("0.0.0.0", "127.0.0.1"),
        ("", "127.0.0.1"),
        pytest.param("::", "::1", marks=needs_ipv6),
        pytest.param("::1", "::1", marks=needs_ipv6),
    ],
)
def test_the_client_is_sent_to_an_address_the_server_listens_on(bind: str, client_host: str) -> None:
    # `::` used to send the client to 127.0.0.1, which an IPv6-only socket does not answer: every
    # request of the run was "Connection refused".
    with start_server(SimulatedServerConfig(host=bind)) as handle:
        assert httpx.URL(handle.api_base).host == client_host
        models = httpx.get(handle.api_base + "/models", trust_env=False, timeout=5)
    assert models.status_code == 200


@needs_ipv6
def test_with_every_interface_the_announced_port_is_the_ipv4_sockets() -> None:
    # host "" binds one IPv4 and one IPv6 socket, on different ports when the port is 0; the client
    # goes to 127.0.0.1, so the port announced must be the IPv4 socket's, whichever came first.
    async def run() -> tuple[str, int, dict[int, int]]:
        server = await start_simulated_server(SimulatedServerConfig(host="", port=0))
        try:
            ports = {s.family: s.getsockname()[1] for s in server.sockets}
            return server.host, server.port, ports
        finally:
            await server.close()

    host, port, ports = asyncio.run(run())
    assert set(ports) == {socket.AF_INET, socket.AF_INET6}
    assert (host, port) == ("0.0.0.0", ports[socket.AF_INET])


@needs_ipv6
def test_the_announced_address_prefers_ipv4_whatever_the_socket_order() -> None:
    with socket.socket(socket.AF_INET6) as v6, socket.socket(socket.AF_INET) as v4:
        v6.bind(("::", 0))
        v4.bind(("0.0.0.0", 0))
        assert listening_address([v6, v4]) == ("0.0.0.0", v4.getsockname()[1])
        assert listening_address([v6]) == ("::", v6.getsockname()[1])


@needs_ipv6
def test_simulate_server_on_every_ipv6_interface_prints_a_url_that_answers() -> None:
    # It printed `http://:::38067/v1`: no URL at all.
    with simulate_server("--host", "::") as url:
        assert url.startswith("http://[::1]:") and url.endswith("/v1"), url
        assert httpx.get(url + "/models", trust_env=False, timeout=5).status_code == 200


@needs_ipv6
def test_every_ipv6_interface_is_free_though_the_ipv4_port_is_taken() -> None:
    """The server binds `::` IPv6-only (asyncio does), so a port taken on 127.0.0.1 does not stop it:
    the port check must not say otherwise."""
    with socket.socket(socket.AF_INET) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        check_server_port(SimulatedServerConfig(host="::", port=port))  # no ConfigError
        with start_server(SimulatedServerConfig(host="::", port=port)) as handle:
            assert httpx.get(f"{handle.api_base}/models", trust_env=False).status_code == 200
