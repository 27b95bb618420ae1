"""Shared test fixtures and locations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The seed doc lives beside the checkout (../shared/seed); CI copies it there too.
SEED_DOC = REPO.parent / "shared" / "seed" / "000_3c1dceded70a7d25.txt"


@pytest.fixture(autouse=True)
def _no_ambient_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests decide themselves which OPENAI_* / WANDB_* variables exist."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "WANDB_")):
            monkeypatch.delenv(name, raising=False)
