"""One driver's share of the run's one session stream.

Session i of the stream (its id) runs on driver i % N. Every driver walks the whole stream in the
same order, building its own sessions and drawing the others only as cheap placeholders (same
shapes, lengths and arrival offsets, no prompt text), so the same seed gives the same sessions at the
same offsets whatever N is, and a session (with its multi-turn history) never spans two drivers.
"""

from __future__ import annotations

from collections.abc import Callable

from veeksha.runner.driver.traffic import arrival_offsets
from veeksha.runner.sessions.model import Session, SessionGenerator


class PlacedSessions:
    def __init__(
        self,
        sessions: SessionGenerator,
        driver_id: int,
        num_drivers: int,
        gaps: Callable[[], float] | None,
        limit: int | None,
    ) -> None:
        """`gaps`: rate traffic's arrival gaps (None for concurrent traffic); `limit`: how many
        sessions the whole run starts (None: no limit)."""
        self.sessions = sessions
        self.driver_id = driver_id
        self.num_drivers = num_drivers
        self.limit = limit
        # The first session comes one gap after the start, so n sessions span n gaps.
        self.offsets = arrival_offsets(gaps, first_at=gaps()) if gaps is not None else None
        self.position = 0  # sessions of the stream drawn so far, by every driver
        self.exhausted = False  # the stream itself ended (a finite trace)

    def next_session(self) -> Session | None:
        """This driver's next session with its arrival offset set (rate traffic: the schedule's draw,
        unless a timed trace gave one); None once the run's sessions are all placed."""
        while self.limit is None or self.position < self.limit:
            mine = self.position % self.num_drivers == self.driver_id
            session = self.sessions.next_session(build=mine)
            if session is None:
                self.exhausted = True
                return None
            self.position += 1
            if self.offsets is not None and session.arrival_offset is None:
                session.arrival_offset = next(self.offsets)
            if mine:
                return session
        return None
