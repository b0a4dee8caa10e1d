"""Every message on the wire as a msgspec Struct, and payload decoders built once.

A payload is JSON (first non-blank byte ``{`` or ``[``) or MessagePack, holding one object or
an array of objects.  The typed decoder handles a well-formed payload in one call; only when
it fails do we fall back to element-by-element conversion, so that one bad element of a
batch costs that element, not the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec

from streamer.config import ConstituentSpec
from streamer.fund_config import HoldingSpec

MessageKind = Literal["tick", "fx", "reference", "control"]

# Integers the engine keeps in int64 arrays: anything else is malformed at the edge, before
# it can overflow a column (a uint64 ts used to escape as OverflowError).
Nanos = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
# Identities that reach logs, Redis keys and JSON: bounded and free of control characters,
# so no message can forge a log line or break the live channel's JSON.
Symbol = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[^\x00-\x20\x7f]+$")]
# A tick's symbol is only looked up (an unknown one is rejected by name): a length bound is
# enough, and a pattern per tick would cost a regex search on the hot path.
TickSymbol = Annotated[str, msgspec.Meta(max_length=64)]
SeriesId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
ActionId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
]
Pair = Annotated[str, msgspec.Meta(min_length=1, max_length=16)]


# omit_defaults: a tick without a quote (bid, ask) or seq encodes without their nulls.
class Tick(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=False, omit_defaults=True):
    symbol: TickSymbol
    price: float
    ts: Nanos | None = None  # producer's UTC time, integer ns; None: time of receipt
    seq: Seq | None = None  # optional, increasing per symbol
    # Best bid and ask, optional: a fund listing's premium uses their mid when both are given.
    bid: float | None = None
    ask: float | None = None


class FxRate(msgspec.Struct, frozen=True, gc=False):
    pair: Pair  # e.g. EURUSD: units of USD per 1 EUR
    rate: float
    ts: Nanos | None = None


class ReferenceLevel(msgspec.Struct, frozen=True, gc=False):
    index: SeriesId
    level: float
    ts: Nanos | None = None


class _Action(
    msgspec.Struct, frozen=True, tag_field="action", forbid_unknown_fields=True, kw_only=True
):
    id: ActionId
    effective: Nanos | None = None  # UTC ns; None: now


class Split(_Action, frozen=True, tag="split"):
    symbol: Symbol
    ratio: float


class SpecialDividend(_Action, frozen=True, tag="special_dividend"):
    symbol: Symbol
    amount: float


class Dividend(_Action, frozen=True, tag="dividend"):
    symbol: Symbol
    amount: float


class Rights(_Action, frozen=True, tag="rights"):
    symbol: Symbol
    ratio: float
    price: float


class Spinoff(_Action, frozen=True, tag="spinoff"):
    symbol: Symbol
    ratio: float
    price: float


class SharesChange(_Action, frozen=True, tag="shares"):
    symbol: Symbol
    shares: float | None = None
    iwf: float | None = None
    awf: float | None = None
    index: SeriesId | None = None  # None: every index holding the symbol


class AddConstituent(_Action, frozen=True, tag="add"):
    index: SeriesId
    symbol: Symbol
    shares: float | None = None
    iwf: float | None = None
    awf: float | None = None
    currency: str | None = None
    withholding: float | None = None
    price: float | None = None  # seeds the price if no tick has come


class DeleteConstituent(_Action, frozen=True, tag="delete"):
    index: SeriesId
    symbol: Symbol


class Rebalance(_Action, frozen=True, tag="rebalance"):
    index: SeriesId
    constituents: tuple[ConstituentSpec, ...] | None = None


class Close(_Action, frozen=True, tag="close"):
    """An official close on demand (operators, recorded data): one index, or all."""

    index: SeriesId | None = None


class BasketChange(_Action, frozen=True, tag="basket"):
    """A fund's new portfolio composition, inline (holdings, cash, units per creation unit);
    it takes effect at the first session open at or after ``effective``."""

    fund: SeriesId
    holdings: tuple[HoldingSpec, ...]
    cash: float = 0.0
    units: float = 1.0


Action = (
    Split
    | SpecialDividend
    | Dividend
    | Rights
    | Spinoff
    | SharesChange
    | AddConstituent
    | DeleteConstituent
    | Rebalance
    | Close
    | BasketChange
)

Message = Tick | FxRate | ReferenceLevel | Action

T = TypeVar("T")


@dataclass(slots=True)
class Decoded(Generic[T]):
    """The usable messages of one payload and how many of its elements were malformed."""

    messages: list[T]
    malformed: int = 0
    error: str = ""


class PayloadDecoder(Generic[T]):
    """Decodes JSON or MessagePack payloads holding one ``T`` or an array of them."""

    def __init__(self, message_type: Any) -> None:
        self._type = message_type
        target = message_type | list[message_type]
        self._json = msgspec.json.Decoder(target)
        self._msgpack = msgspec.msgpack.Decoder(target)
        self._json_any = msgspec.json.Decoder()
        self._msgpack_any = msgspec.msgpack.Decoder()

    def decode(self, payload: bytes) -> Decoded[T]:
        """Total: any payload gives usable messages and a count of malformed elements;
        nothing raises (hostile nesting, invalid UTF-8, out-of-range integers included)."""
        is_json = _looks_like_json(payload)
        try:
            value = (self._json if is_json else self._msgpack).decode(payload)
        except DECODE_ERRORS as exc:
            return self._decode_slowly(payload, is_json, _describe(exc))
        if isinstance(value, list):
            return Decoded(value)
        return Decoded([value])

    def _decode_slowly(self, payload: bytes, is_json: bool, first_error: str) -> Decoded[T]:
        """Element by element, so that one bad element of a batch costs only itself."""
        try:
            value = (self._json_any if is_json else self._msgpack_any).decode(payload)
        except DECODE_ERRORS:
            return Decoded([], 1, first_error)
        items = value if isinstance(value, list) else [value]
        good: list[T] = []
        bad = 0
        error = first_error
        for item in items:
            try:
                good.append(msgspec.convert(item, self._type))
            except DECODE_ERRORS as exc:
                bad += 1
                error = _describe(exc)
        return Decoded(good, bad, error)


# What decoding hostile bytes can raise: msgspec's own errors, RecursionError for deep nesting
# (msgspec recurses per level) and UnicodeDecodeError for invalid UTF-8 in a MessagePack
# string.  ValueError and OverflowError cover conversions of odd values.
DECODE_ERRORS = (
    msgspec.ValidationError,
    msgspec.DecodeError,
    RecursionError,
    UnicodeDecodeError,
    ValueError,
    OverflowError,
    TypeError,
)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)[:200] or type(exc).__name__


def _looks_like_json(payload: bytes) -> bool:
    head = payload[:1]
    if head in (b"{", b"["):
        return True
    # Leading whitespace is legal JSON but never a valid start of a MessagePack object we accept.
    stripped = payload.lstrip()[:1]
    return head in (b" ", b"\n", b"\r", b"\t") and stripped in (b"{", b"[")


DECODERS: dict[MessageKind, PayloadDecoder[Any]] = {
    "tick": PayloadDecoder(Tick),
    "fx": PayloadDecoder(FxRate),
    "reference": PayloadDecoder(ReferenceLevel),
    "control": PayloadDecoder(Action),
}

TOPIC_KINDS: dict[str, MessageKind] = {
    "ticks": "tick",
    "fx": "fx",
    "reference": "reference",
    "control": "control",
}


def kind_of_topic(topic: str) -> MessageKind | None:
    """The message kind a topic carries, from its first level (``ticks/...`` -> tick)."""
    return TOPIC_KINDS.get(topic.split("/", 1)[0])


def kind_of_object(obj: Any) -> MessageKind | None:
    """The kind of a decoded JSON object, from its fields (used where no topic routes it)."""
    if not isinstance(obj, dict):
        return None
    if "action" in obj:
        return "control"
    if "pair" in obj and "rate" in obj:
        return "fx"
    if "index" in obj and "level" in obj:
        return "reference"
    if "symbol" in obj and "price" in obj:
        return "tick"
    return None


_MESSAGE_TYPES: dict[MessageKind, Any] = {
    "tick": Tick,
    "fx": FxRate,
    "reference": ReferenceLevel,
    "control": Action,
}


def message_from_object(obj: Any) -> Message:
    """Convert one decoded object to its typed message; raises ValueError naming the problem."""
    kind = kind_of_object(obj)
    if kind is None:
        raise ValueError("not a tick, fx rate, reference level or control action")
    try:
        message: Message = msgspec.convert(obj, _MESSAGE_TYPES[kind])
    except DECODE_ERRORS as exc:
        raise ValueError(f"{kind}: {_describe(exc)}") from None
    return message


_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()


def encode(messages: Any, fmt: Literal["json", "msgpack"] = "json") -> bytes:
    """Encode a message, or a list of them, as a payload."""
    return (_json_encoder if fmt == "json" else _msgpack_encoder).encode(messages)
