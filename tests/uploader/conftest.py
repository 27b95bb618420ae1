"""Running `veeksha-upload` as users do: a real process, the real wandb SDK (offline), real files.

Every invocation gets a private HOME / W&B config and cache directories, so nothing touches the
developer's W&B login and a test can check that nothing was staged outside the run directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.uploader.fake_wandb import FakeWandb

VEEKSHA_UPLOAD = str(Path(sys.executable).parent / "veeksha-upload")


@dataclass
class Home:
    """A throw-away home directory for the SDK."""

    root: Path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "OPENAI_"))}
        env.update(
            HOME=str(self.root),
            XDG_CACHE_HOME=str(self.root / ".cache"),
            XDG_DATA_HOME=str(self.root / ".local" / "share"),
            XDG_CONFIG_HOME=str(self.root / ".config"),
            NETRC=str(self.root / ".netrc"),
        )
        env.update(extra or {})
        return env


def make_home(base: Path) -> Home:
    base.mkdir(parents=True, exist_ok=True)
    return Home(base)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    return make_home(tmp_path_factory.mktemp("home"))


def upload(
    args: list[str], home: Home, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VEEKSHA_UPLOAD, *args],
        cwd=cwd,
        env=home.env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def lines_for(stdout: str, status: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(status)]


@pytest.fixture
def fake_wandb() -> Iterator[FakeWandb]:
    """A loopback W&B server that remembers runs; the real SDK talks to it (tests/uploader/fake_wandb.py)."""
    with FakeWandb() as fake:
        yield fake


def online_env(fake: FakeWandb) -> dict[str, str]:
    return {"WANDB_BASE_URL": fake.base_url, "WANDB_API_KEY": fake.api_key}


def local_run_folders(root: Path) -> list[str]:
    """The SDK's run folders under <dir>/wandb (offline-run-* and run-*)."""
    wdir = root / "wandb"
    return sorted(p.name for p in wdir.glob("*run-*") if p.is_dir()) if wdir.is_dir() else []


def read_marker_json(root: Path) -> dict:
    import json

    return json.loads((root / "wandb_run.json").read_text())


def until(check: Callable[[], Any], within_s: float, what: str, step: float = 0.1) -> Any:
    """Poll `check` until it returns something truthy (returned); fail naming `what` after `within_s`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(step)
    raise AssertionError(f"not within {within_s} s: {what}")
