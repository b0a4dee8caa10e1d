"""What happens at a given market time: pending actions and the session closes of calendars.

Every scheduled event has a *cut* and a *trigger*:

- the cut orders it among ticks: ticks stamped before the cut are applied before it, ticks
  stamped at or after it after (for an action, its effective time; for a close, one
  nanosecond after the scheduled close, so ticks stamped up to the close count towards it);
- the trigger is the earliest market time at which it fires, by the clock or by a tick stamped
  at or after it.  For an action it is the cut.  A close waits ``close_delay`` past the close,
  so that late ticks stamped before it still count; ticks stamped in between are outside the
  session and refused anyway, so the wait never holds a tick back.  Where the next session
  opens at once (24/7), the first tick of the next session triggers the close.

Events fire in cut order: an event cannot fire before one with an earlier cut.

Sessions come from a :data:`SessionSource` (the runtime's adapter of ``exchange_calendars``),
called with explicit time ranges: the engine never reads a clock.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from streamer.wire import Action

DAY_NS = 86_400 * 1_000_000_000
MAX_SESSION_NS = 2**63 - 1
# Sessions are fetched this far ahead of the current one (a year of trading days).
WINDOW_NS = 370 * DAY_NS


class Session(NamedTuple):
    date: str  # ISO date of the session
    open_ns: int  # UTC ns
    close_ns: int  # UTC ns, the scheduled close (early closes included)


# (calendar name, start ns, end ns) -> the sessions that intersect [start, end], in order.
SessionSource = Callable[[str, int, int], list[Session]]


@dataclass(frozen=True)
class SessionRules:
    """How the engine follows trading sessions."""

    default_calendar: str
    source: SessionSource
    close_delay_ns: int = 0
    reject_outside: bool = True  # ticks stamped outside the session are refused


@dataclass(frozen=True, slots=True)
class ScheduledClose:
    """The official close of every index on ``calendar`` at the end of ``session``."""

    calendar: str
    session: Session


Event = Action | ScheduledClose


class Pending(NamedTuple):
    cut: int
    order: int
    trigger: int
    event: Event


class Agenda:
    """Pending events in cut order (a heap)."""

    def __init__(self) -> None:
        self._heap: list[Pending] = []
        self._order = itertools.count()
        self.ids: set[str] = set()  # ids of the pending actions (closes have none)

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def actions(self) -> int:
        """Pending actions (closes are not counted)."""
        return len(self.ids)

    def push(self, cut: int, trigger: int, event: Event) -> None:
        heapq.heappush(self._heap, Pending(cut, next(self._order), max(cut, trigger), event))
        if not isinstance(event, ScheduledClose):
            self.ids.add(event.id)

    @property
    def next_trigger(self) -> int | None:
        """When the first event fires (None: nothing pending)."""
        return self._heap[0].trigger if self._heap else None

    @property
    def next_cut(self) -> int:
        return self._heap[0].cut

    def pop(self) -> Pending:
        item = heapq.heappop(self._heap)
        if not isinstance(item.event, ScheduledClose):
            self.ids.discard(item.event.id)
        return item

    def pending_actions(self) -> list[tuple[int, Action]]:
        """(effective, action) of every pending action, in the order they will apply."""
        return [
            (p.cut, p.event) for p in sorted(self._heap) if not isinstance(p.event, ScheduledClose)
        ]

    def drop_closes(self, calendar: str) -> None:
        self._heap = [
            p
            for p in self._heap
            if not (isinstance(p.event, ScheduledClose) and p.event.calendar == calendar)
        ]
        heapq.heapify(self._heap)


class Cursor:
    """Where one calendar stands: the current session (the one whose close is next)."""

    def __init__(
        self,
        name: str,
        source: SessionSource,
        last_closed: str | None = None,
        last_close_ns: int | None = None,
    ) -> None:
        self.name = name
        self._source = source
        self.last_closed = last_closed  # ISO date of the last close taken, if any
        self.last_close_ns = last_close_ns  # and its close time
        self._sessions: list[Session] = []
        self._position = 0
        self.current: Session | None = None

    def start(self, now_ns: int) -> Session | None:
        """Find the current session: the first after the last close taken, or else the one
        ``now`` is in (or the next one)."""
        since = now_ns if self.last_close_ns is None else min(self.last_close_ns, now_ns)
        self._fetch(since - 7 * DAY_NS)
        self._seek(now_ns)
        return self.current

    def session_start(self) -> int:
        """The first instant a tick of the current session may be stamped: its open, but
        never at or before the last close taken (back-to-back sessions share that instant,
        and it belongs to the session that closed)."""
        assert self.current is not None
        if self.last_close_ns is None:
            return self.current.open_ns
        return max(self.current.open_ns, self.last_close_ns + 1)

    def advance(self) -> Session | None:
        """The close of the current session was taken: move to the next one."""
        if self.current is not None:
            self.last_closed = self.current.date
            self.last_close_ns = self.current.close_ns
            self._position += 1
            if self._position >= len(self._sessions):
                self._fetch(self.current.close_ns)
                self._seek(self.current.close_ns)
            else:
                self.current = self._sessions[self._position]
        return self.current

    def _fetch(self, start_ns: int) -> None:
        self._sessions = self._source(self.name, start_ns, start_ns + WINDOW_NS)
        self._position = 0

    def _seek(self, now_ns: int) -> None:
        for k, session in enumerate(self._sessions):
            if self.last_closed is not None:
                if session.date > self.last_closed:
                    self._position, self.current = k, session
                    return
            elif session.close_ns >= now_ns:
                self._position, self.current = k, session
                return
        if self._sessions and self.last_closed is not None:
            # Every fetched session was closed already: look further ahead.
            self._fetch(self._sessions[-1].close_ns)
            if self._sessions and self._sessions[0].date > self.last_closed:
                self._position, self.current = 0, self._sessions[0]
                return
        self.current = None  # the calendar has no session in reach

    def next_open(self) -> int | None:
        """When the session after the current one opens."""
        k = self._position + 1
        if k < len(self._sessions):
            return self._sessions[k].open_ns
        if self.current is None:
            return None
        ahead = self._source(self.name, self.current.close_ns, self.current.close_ns + WINDOW_NS)
        later = [s for s in ahead if s.date > self.current.date]
        return later[0].open_ns if later else None


def utc_days(name: str, start_ns: int, end_ns: int) -> list[Session]:
    """A session per UTC day (the "24/7" calendar), computed without any library."""
    import datetime as dt

    first = max(start_ns, 0) // DAY_NS
    # Nanosecond stamps end in 2262 (int64): no session closes after that.
    last = min(max(end_ns, 0) // DAY_NS, MAX_SESSION_NS // DAY_NS - 1)
    epoch = dt.date(1970, 1, 1)
    return [
        Session((epoch + dt.timedelta(days=d)).isoformat(), d * DAY_NS, (d + 1) * DAY_NS)
        for d in range(first, last + 1)
    ]
