"""A user's clone has nothing beside it: no test, script or CI step may read the folder above the repo."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# A relative step to the folder beside the repo, or REPO.parent: the ways to step outside.
OUTSIDE = re.compile(r"\.\./shared|REPO\.parent\b|parents\[1\]\.parent")


def test_no_test_script_or_ci_step_reads_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for folder in ("tests", "scripts", ".ci")
        for path in sorted((REPO / folder).rglob("*"))
        if path.is_file() and path.suffix in {".py", ".sh", ""} and path != Path(__file__)
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offenders == []


def test_the_seed_configs_travel_with_the_tests() -> None:
    names = sorted(p.name for p in (REPO / "tests" / "fixtures" / "seed").glob("*.veeksha.yml"))
    assert len(names) == 4
