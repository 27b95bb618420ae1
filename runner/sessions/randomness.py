"""Named random streams: every source of randomness derives from the root seed by name.

A stream is `random.Random(f"{seed}/{name}")`. String seeds go through SHA-512 inside `random`, so a
stream does not depend on PYTHONHASHSEED, the process, or the order other streams were created in:
changing how one component draws (say, output lengths) leaves every other stream's values unchanged.
"""

from __future__ import annotations

import random


def stream(seed: int, name: str) -> random.Random:
    """The random stream called `name` under root seed `seed` (stable across processes and runs)."""
    return random.Random(f"{seed}/{name}")
