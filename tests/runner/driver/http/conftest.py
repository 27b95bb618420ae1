"""One quirk server (real loopback HTTP in its own thread) per client test module of this folder.

Per module, not per session: its thread's loop leaves asyncio transports for the collector, and a server
still running later would put them into the garbage that tests/runner/driver/test_memory.py inspects.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.runner.driver.http.quirk_server import QuirkServer


@pytest.fixture(scope="module")
def quirks() -> Iterator[QuirkServer]:
    with QuirkServer() as server:
        yield server
