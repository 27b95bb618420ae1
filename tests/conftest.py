"""Shared test fixtures and locations."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The YAML blocks of the seed document, in the doc's order (the last is its complete example).
SEED_CONFIGS = sorted((REPO / "tests" / "fixtures" / "seed").glob("*.veeksha.yml"))


def pytest_configure(config: pytest.Config) -> None:
    """Many tests send Ctrl-C or a hangup to a run they start. A suite started in the background
    (`cmd &` from a script, `nohup`) has SIGINT or SIGHUP ignored, and every child inherits that
    (Python keeps an ignored SIGINT ignored, as it should for a user's `veeksha-run &`): restore
    the defaults, so the runs the tests start get the signals the tests send."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def _no_ambient_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests decide themselves which OPENAI_* / WANDB_* variables exist."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "WANDB_")):
            monkeypatch.delenv(name, raising=False)
