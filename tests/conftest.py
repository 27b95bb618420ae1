"""Shared test fixtures and locations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The YAML blocks of the seed document, in the doc's order (the last is its complete example).
SEED_CONFIGS = sorted((REPO / "tests" / "fixtures" / "seed").glob("*.veeksha.yml"))


@pytest.fixture(autouse=True)
def _no_ambient_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests decide themselves which OPENAI_* / WANDB_* variables exist."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "WANDB_")):
            monkeypatch.delenv(name, raising=False)
