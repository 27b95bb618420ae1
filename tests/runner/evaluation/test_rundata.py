"""What every evaluator shares: the session table's order is part of the result, not luck."""

from __future__ import annotations

import random

from .factory import request, run_data


def test_sessions_that_start_together_are_listed_by_session_id():
    # The precise timer sends every request due in one pass with one timestamp, so equal first
    # dispatches are common. Their order feeds the session_duration mean (a float sum), and a
    # re-evaluation must give the same bytes.
    ids = list(range(40))
    random.Random(1).shuffle(ids)
    records = [request(i, sent=1.0, chunks=[1.0 + 0.1 * (i + 1)], session=i) for i in ids]
    data = run_data(records)
    assert data.sessions["session_id"].to_list() == sorted(ids)
