"""Which Ray nodes would send a loopback endpoint's requests to their own machine.

The rule alone, on node lists shaped as `ray.nodes()` returns them: the test cluster's nodes all
sit on this machine's loopback (test_ray_e2e.py), so a node on another machine cannot be made here.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'veeksha[ray]')")

from veeksha.runner.ray_drivers import is_loopback, nodes_elsewhere


def node(address: str, cpus: float = 4, alive: bool = True) -> dict[str, Any]:
    return {"NodeManagerAddress": address, "Alive": alive, "Resources": {"CPU": cpus} if cpus else {}}


def test_nodes_on_other_machines_are_named() -> None:
    nodes = [node("10.0.0.5"), node("10.0.0.6"), node("10.0.0.7")]
    assert nodes_elsewhere(nodes, here="10.0.0.5") == ["10.0.0.6", "10.0.0.7"]


def test_a_cluster_on_this_machine_alone_has_no_node_elsewhere() -> None:
    assert nodes_elsewhere([node("127.0.0.1"), node("127.0.0.1")], here="127.0.0.1") == []
    assert nodes_elsewhere([node("10.0.0.5")], here="10.0.0.5") == []


def test_dead_nodes_and_nodes_without_a_cpu_take_no_driver() -> None:
    nodes = [node("10.0.0.5"), node("10.0.0.6", alive=False), node("10.0.0.7", cpus=0)]
    assert nodes_elsewhere(nodes, here="10.0.0.5") == []


def test_in_client_mode_every_node_that_is_not_loopback_is_elsewhere() -> None:
    assert nodes_elsewhere([node("10.0.0.5"), node("127.0.0.1")], here=None) == ["10.0.0.5"]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("10.0.0.5", False),
        ("inference.internal", False),
        ("10.1", False),  # 10.0.0.1
        ("localhost.example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    "host",
    [
        "localhost.",  # the fully qualified name
        "LOCALHOST",
        "api.localhost",  # RFC 6761: every name under localhost
        "127.1",  # the short forms every resolver (inet_aton) reads as 127.0.0.1
        "2130706433",
        "0x7f.0.0.1",
        "0.0.0.0",  # unspecified: a connection to it reaches the machine's own server
        "0",
        "::",
        "[::]",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "0:0:0:0:0:0:0:1",
    ],
)
def test_every_spelling_of_this_machine_is_loopback(host: str) -> None:
    """Requests to these from a driver node on another machine go to that machine: each spelling
    passed the check (e.g. `client.api_base: http://127.1:8000/v1`) with a node elsewhere."""
    assert is_loopback(host)
