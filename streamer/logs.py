"""Log formatting and throttling.  ``cli`` is the only place that configures logging; this
module holds what it installs and the throttle the service uses for bad input.

Field values and events are escaped in the text format so that no input (a symbol or an
action id carrying a newline) can forge a log line: a value with spaces, quotes, ``=`` or
control characters is written as a JSON string, and control characters in an event become
``\\xNN``.  The JSON format escapes them by construction.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NEEDS_QUOTES = re.compile(r'[\s="]')


def escape(text: str) -> str:
    """``text`` with every control character written as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _field(value: Any) -> str:
    """One ``key=value`` token's value: as is when plain, else quoted JSON (which escapes
    quotes, newlines and the other C0 controls; DEL and C1 are escaped after)."""
    text = str(value)
    if text and not _NEEDS_QUOTES.search(text) and not _CONTROL.search(text):
        return text
    return escape(json.dumps(text, ensure_ascii=False))


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextLogFormatter(logging.Formatter):
    """``time level logger event key=value ...`` on one line, whatever the input."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict) and extra:
            line += " " + " ".join(f"{escape(str(k))}={_field(v)}" for k, v in extra.items())
        return line


class ThrottledLog:
    """Logs an event at most once per ``interval_s`` per key, reporting how many it skipped."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._skipped: Counter[str] = Counter()

    def allows(self, key: str) -> bool:
        """Whether ``key`` would be logged now (to skip building an expensive event)."""
        last = self._last.get(key)
        return last is None or self._clock() - last >= self._interval

    def warning(self, key: str, event: str, count: int = 1, /, **fields: Any) -> None:
        """Log ``event`` (standing for ``count`` occurrences) unless ``key`` was logged less
        than ``interval_s`` ago; the occurrences skipped are reported with the next line."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._skipped[key] += count
            return
        if len(self._last) > 10_000:  # keys are reasons, bounded; this is a safety net
            self._last.clear()
        self._last[key] = now
        skipped = self._skipped.pop(key, 0)
        if skipped:
            fields["suppressed"] = skipped
        self._logger.warning(event, extra={"fields": fields})
