"""What goes into a checkpoint, and when one is due."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec

from streamer.engine import snapshot
from streamer.engine.state import EngineState

META_FORMAT = 1


class Meta(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: int
    revision: int  # of the structure the market part belongs to
    taken_ns: int  # wall clock
    market_now: int  # the pipeline's market clock (data clock: the newest tick)
    structure_bytes: int
    market_bytes: int
    final: bool = False  # the last checkpoint of a clean shutdown (nothing runs after it)
    # The MQTT client id of the process that wrote it: a replica restoring another's
    # checkpoint (a standby's first start) has no broker session of its own to expect.
    writer: str = ""


@dataclass(frozen=True, slots=True)
class Blobs:
    """One checkpoint as the store writes it; ``structure`` None when unchanged since the
    last one written."""

    structure: bytes | None
    market: bytes
    meta: bytes
    revision: int


_meta_encoder = msgspec.msgpack.Encoder()
_meta_decoder = msgspec.msgpack.Decoder(Meta)


def decode_meta(blob: bytes) -> Meta | None:
    try:
        return _meta_decoder.decode(blob)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class Checkpointer:
    """Builds checkpoints of one engine state; remembers what was last made durable, so the
    structural part (membership: megabytes on a large universe) is rewritten only when the
    state's revision moved."""

    def __init__(
        self,
        state: EngineState,
        identities: Sequence[snapshot.Identity],
        interval_ns: int,
        writer: str = "",
    ) -> None:
        self._state = state
        self._writer = writer
        self._identities = identities  # snapshot.identities of the engine's definitions
        self.interval_ns = interval_ns
        self.durable_revision = -1  # revision of the last structure made durable
        self.last_taken_ns = 0  # wall clock of the last checkpoint made durable
        self.last_bytes = 0

    def due(self, wall_ns: int) -> bool:
        """A checkpoint is due: the structure changed, or the interval has passed."""
        return (
            self._state.revision != self.durable_revision
            or wall_ns - self.last_taken_ns >= self.interval_ns
        )

    @property
    def structure_changed(self) -> bool:
        return self._state.revision != self.durable_revision

    def take(self, wall_ns: int, market_now: int, final: bool = False) -> Blobs:
        state = self._state
        structure = None
        if state.revision != self.durable_revision:
            structure = snapshot.encode_part(snapshot.structure(state, self._identities))
        market = snapshot.encode_part(snapshot.market(state))
        meta = Meta(
            format=META_FORMAT,
            revision=state.revision,
            taken_ns=wall_ns,
            market_now=market_now,
            structure_bytes=len(structure) if structure is not None else -1,
            market_bytes=len(market),
            final=final,
            writer=self._writer,
        )
        return Blobs(structure, market, _meta_encoder.encode(meta), state.revision)

    def committed(self, blobs: Blobs, wall_ns: int) -> None:
        """The store acknowledged ``blobs``: they are durable."""
        self.durable_revision = blobs.revision
        self.last_taken_ns = wall_ns
        self.last_bytes = len(blobs.market) + (len(blobs.structure) if blobs.structure else 0)


class Checkpoints:
    """How publish cycles make the engine's state durable: no store (the base class: never a
    checkpoint), or one of the strategies below.

    ``take`` builds a checkpoint when one is due (or forced), else None.  With ``inline``
    the checkpoint travels in the cycle's script call (Redis: durable with it); otherwise
    ``write`` makes it durable before the cycle is sent (a directory)."""

    inline = True
    enabled = False
    closing = False  # set for the final cycle of a clean shutdown

    def take(self, force: bool) -> Blobs | None:
        return None

    async def write(self, blobs: Blobs) -> None:
        return None

    def committed(self, blobs: Blobs) -> None:
        return None

    def forget_durable(self) -> None:
        """What this process wrote is no longer what the store holds (another writer
        wrote since): the next checkpoint carries the structure again."""
        return None


class InlineCheckpoints(Checkpoints):
    """Checkpoints written by the publish script, atomically with the cycle's levels."""

    enabled = True

    def __init__(
        self,
        checkpointer: Checkpointer,
        market_now: Callable[[], int],
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.checkpointer = checkpointer
        self._market_now = market_now
        self._wall = wall_clock

    def take(self, force: bool) -> Blobs | None:
        now = self._wall()
        if force or self.checkpointer.due(now):
            return self.checkpointer.take(now, self._market_now(), final=self.closing)
        return None

    def committed(self, blobs: Blobs) -> None:
        self.checkpointer.committed(blobs, self._wall())

    def forget_durable(self) -> None:
        self.checkpointer.durable_revision = -1


class WrittenCheckpoints(InlineCheckpoints):
    """Checkpoints a store makes durable before the cycle that reflects them is sent."""

    inline = False

    def __init__(
        self,
        checkpointer: Checkpointer,
        market_now: Callable[[], int],
        write: Callable[[Blobs], None],
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(checkpointer, market_now, wall_clock)
        self._write = write

    async def write(self, blobs: Blobs) -> None:
        # fsync of a large file takes milliseconds: off the event loop.
        await asyncio.to_thread(self._write, blobs)
