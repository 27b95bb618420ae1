"""runner/liveness.py: what is said of a directory whose process cannot be looked at from here."""

from __future__ import annotations

import pytest
from veeksha.runner.liveness import Owner


@pytest.mark.parametrize(
    ("owner", "said"),
    [
        (
            Owner(4242, "elsewhere"),
            "sweep s may still be running on host 'elsewhere' (process 4242); once that process is gone, "
            "rerun with --other-host-gone to mark it crashed",
        ),
        (
            Owner.named_in({}, {"status": "running"}),  # older files that name no process
            "sweep s may still be running: its process is not recorded; once it has ended, rerun with "
            "--other-host-gone to mark it crashed",
        ),
        (
            Owner(None, "elsewhere"),
            "sweep s may still be running on host 'elsewhere' (its process id is not recorded); once that "
            "process is gone, rerun with --other-host-gone to mark it crashed",
        ),
    ],
    ids=["known", "unknown", "host-only"],
)
def test_may_be_running_names_what_is_known_of_the_process(owner: Owner, said: str) -> None:
    assert owner.may_be_running("sweep s") == said
