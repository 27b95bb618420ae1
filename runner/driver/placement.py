"""One driver's share of the run's one session stream.

Session i of the stream (its id) runs on driver i % N; when the run's concurrency is split into
slots (concurrent traffic's sessions, or a rate's max_concurrent_sessions: slot s belongs to driver
s % N), on the driver of slot i % slots instead, so that each driver gets sessions in proportion to
its slots (3 slots on 2 drivers: 2/3 and 1/3; an even split left one driver with half the sessions
and a third of the slots, running alone long after the other). Every driver walks the whole stream
in the same order, building its own sessions and drawing the others only as cheap placeholders (same
shapes, lengths and arrival offsets, no prompt text), so the same seed gives the same sessions at the
same offsets whatever N is, and a session (with its multi-turn history) never spans two drivers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from veeksha.runner.driver.traffic import arrival_offsets
from veeksha.runner.sessions.model import Session, SessionGenerator

Position = TypeVar("Position", bound=Any)


def owner_of(position: Position, slots: int | None, num_drivers: int) -> Position:
    """The driver of the stream's session at `position`: written with `%` only, so the same rule
    places one session here and judges a whole run's records (a numpy array, a polars expression) in
    the `drivers` health check."""
    slot = position % slots if slots else position
    return slot % num_drivers


class PlacedSessions:
    def __init__(
        self,
        sessions: SessionGenerator,
        driver_id: int,
        num_drivers: int,
        gaps: Callable[[], float] | None,
        limit: int | None,
        slots: int | None = None,
    ) -> None:
        """`gaps`: rate traffic's arrival gaps (None for concurrent traffic); `limit`: how many
        sessions the whole run starts (None: no limit); `slots`: the run's concurrent-session slots
        the drivers split (None: not split)."""
        self.sessions = sessions
        self.driver_id = driver_id
        self.num_drivers = num_drivers
        self.limit = limit
        self.slots = slots
        # The first session comes one gap after the start, so n sessions span n gaps.
        self.offsets = arrival_offsets(gaps, first_at=gaps()) if gaps is not None else None
        self.position = 0  # sessions of the stream drawn so far, by every driver
        self.exhausted = False  # the stream itself ended (a finite trace)

    def next_session(self) -> Session | None:
        """This driver's next session with its arrival offset set (rate traffic: the schedule's draw,
        unless a timed trace gave one); None once the run's sessions are all placed."""
        while self.limit is None or self.position < self.limit:
            mine = self.owner(self.position) == self.driver_id
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

    def owner(self, position: int) -> int:
        """The driver of the stream's session at `position`."""
        return owner_of(position, self.slots, self.num_drivers)
