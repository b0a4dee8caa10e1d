"""The service's trading sessions: ``[session]`` settings as the engine's SessionRules.

"24/7" is computed here without any library (a session per UTC day, as exchange_calendars
defines it); every other calendar comes from ``streamer.calendars`` (exchange_calendars),
imported only when one is configured.
"""

from __future__ import annotations

from streamer.config import ALWAYS_OPEN_CALENDAR, Settings
from streamer.engine.schedule import Session, SessionRules, utc_days


def sessions_of(name: str, start_ns: int, end_ns: int) -> list[Session]:
    """The sessions of calendar ``name`` that intersect [start_ns, end_ns]."""
    if name == ALWAYS_OPEN_CALENDAR:
        return utc_days(name, start_ns, end_ns)
    from streamer import calendars

    return [
        Session(s.date, s.open_ns, s.close_ns) for s in calendars.sessions(name, start_ns, end_ns)
    ]


def session_rules(settings: Settings) -> SessionRules:
    session = settings.session
    return SessionRules(
        default_calendar=session.calendar,
        source=sessions_of,
        close_delay_ns=int(session.close_delay_s * 1e9),
        reject_outside=session.outside_session == "reject",
    )
