"""One quirk server (real loopback HTTP in its own thread) shared by the client tests of this folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.runner.driver.http.quirk_server import QuirkServer


@pytest.fixture(scope="session")
def quirks() -> Iterator[QuirkServer]:
    with QuirkServer() as server:
        yield server
