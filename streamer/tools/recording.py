"""Recorded messages: JSON Lines (what ``streamer calc`` reads) and CSV ``symbol,price,ts``.

Each record knows its topic (from its kind: ``ticks/<symbol>``, ``fx/<pair>``,
``control/<action>``, ``reference/<index>``), its payload and its recorded time.  A JSON
line is published byte for byte as recorded, so the service decodes exactly the text the
offline calculator decoded.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

from streamer.tools.tick_encoding import topic_for
from streamer.wire import MessageKind, kind_of_object

log = logging.getLogger(__name__)

TOPIC_ROOT: dict[MessageKind, str] = {
    "tick": "ticks",
    "fx": "fx",
    "control": "control",
    "reference": "reference",
}
_NAME_FIELD: dict[MessageKind, str] = {
    "tick": "symbol",
    "fx": "pair",
    "control": "action",
    "reference": "index",
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_json_decoder = msgspec.json.Decoder()
_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()


class RecordingError(ValueError):
    """A record that cannot be replayed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class RecordedMessage:
    kind: MessageKind
    topic: str
    payload: bytes  # JSON, as recorded where possible
    ts: int | None  # recorded UTC ns (tick/fx/reference ``ts``); None for control actions
    obj: dict[str, Any]

    def encoded(self, fmt: Literal["json", "msgpack"]) -> bytes:
        return self.payload if fmt == "json" else _msgpack_encoder.encode(self.obj)


def message_for(obj: Any, where: str, raw: bytes | None = None) -> RecordedMessage:
    """The record for one decoded object; ``raw`` is its original JSON text, if it has one."""
    kind = kind_of_object(obj)
    if kind is None:
        raise RecordingError(f"{where}: not a tick, fx rate, reference level or control action")
    name = obj.get(_NAME_FIELD[kind])
    if not isinstance(name, str) or not name:
        raise RecordingError(f"{where}: field `{_NAME_FIELD[kind]}` must be a non-empty string")
    ts = obj.get("ts") if kind != "control" else None
    if ts is not None and (not isinstance(ts, int) or isinstance(ts, bool)):
        raise RecordingError(f"{where}: field `ts` must be integer nanoseconds, got {ts!r}")
    return RecordedMessage(
        kind=kind,
        topic=topic_for(TOPIC_ROOT[kind], name),
        payload=raw if raw is not None else _json_encoder.encode(obj),
        ts=ts,
        obj=obj,
    )


def read_recording(path: str | Path) -> Iterator[RecordedMessage]:
    """Records of one file, in file order; ``.csv`` is CSV, anything else JSON Lines."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise RecordingError(f"{path}: cannot open: {exc.strerror}") from None
    with handle:
        if path.suffix.lower() == ".csv":
            yield from _read_csv(path, handle)
        else:
            yield from _read_json_lines(path, handle)


def _read_json_lines(path: Path, lines: Any) -> Iterator[RecordedMessage]:
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith(b"#"):
            continue
        where = f"{path}:{lineno}"
        try:
            value = _json_decoder.decode(text)
        except msgspec.DecodeError as exc:
            raise RecordingError(f"{where}: invalid JSON: {exc}") from None
        if isinstance(value, list):  # a recorded batch: each element on its own topic
            for i, item in enumerate(value):
                yield message_for(item, f"{where}[{i}]")
        else:
            yield message_for(value, where, text)


def _read_csv(path: Path, handle: Any) -> Iterator[RecordedMessage]:
    text = handle.read().decode("utf-8")
    rows = csv.reader(text.splitlines())
    for lineno, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in row]
        if lineno == 1 and cells[0].lower() == "symbol":
            continue  # header
        where = f"{path}:{lineno}"
        if len(cells) < 2:
            raise RecordingError(f"{where}: expected symbol,price[,ts], got {row!r}")
        try:
            price = float(cells[1])
        except ValueError:
            raise RecordingError(f"{where}: price {cells[1]!r} is not a number") from None
        obj: dict[str, Any] = {"symbol": cells[0], "price": price}
        if len(cells) > 2 and cells[2]:
            obj["ts"] = parse_timestamp(cells[2], where)
        if not math.isfinite(price):
            log.warning("replaying a non-finite price", extra={"fields": {"at": where}})
        yield message_for(obj, where)


def parse_timestamp(text: str, where: str = "") -> int:
    """Integer UTC nanoseconds, or an ISO 8601 time (``2024-11-21T14:30:00.123Z``)."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise RecordingError(
            f"{where}: ts {text!r} is neither integer nanoseconds nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        raise RecordingError(f"{where}: ts {text!r} needs a time zone (e.g. a trailing Z)")
    since_epoch = moment - _EPOCH  # exact integer arithmetic, unlike timestamp()'s float
    seconds = since_epoch.days * 86_400 + since_epoch.seconds
    return seconds * 1_000_000_000 + since_epoch.microseconds * 1_000
