"""Where checkpoints are kept: Redis (beside the output) or a local directory.

Both keep three documents, the structural part, the market part and the meta, and both read
them back as one consistent checkpoint or not at all:

- Redis: keys ``P:state:structure``, ``P:state:market``, ``P:state:meta`` and
  ``P:state:revision``, written by the publish script in the same call as the levels (see
  ``publish``), read with one script (:data:`READ_STATE_LUA`, atomic).  The script writes a
  market part only over the structure of its revision, so the two can never be mixed.  A
  large structure is a list of slices (one string of 26 MB, written or grown in Redis, held
  it for 25-100 ms), a small one a string; readers take both.
- Directory: see :class:`DirectoryStore`; a crash at any point leaves the previous
  checkpoint or the new one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

from streamer.engine.snapshot import Snapshot, decode_parts
from streamer.errors import StateError
from streamer.persistence.checkpoint import Blobs, Meta, decode_meta


@dataclass(frozen=True, slots=True)
class Stored:
    snapshot: Snapshot
    meta: Meta | None
    size_bytes: int


# The three parts at one moment (KEYS: structure, market, meta): the structure a string or a
# list of slices (in order), the others strings (false: missing).
READ_STATE_LUA = """#!lua
local structure
if redis.call('TYPE', KEYS[1])['ok'] == 'list' then
  structure = redis.call('LRANGE', KEYS[1], 0, -1)
else
  structure = redis.call('GET', KEYS[1])
end
return {structure, redis.call('GET', KEYS[2]), redis.call('GET', KEYS[3])}
"""


def parse_redis_state(reply: object) -> Stored | None:
    """A stored checkpoint from READ_STATE_LUA's reply (see :func:`parse_stored`)."""
    parts = list(reply) if isinstance(reply, list | tuple) else []
    parts += [None] * (3 - len(parts))
    structure, market, meta = parts[:3]
    if isinstance(structure, list):
        pieces = [piece for piece in map(_blob, structure) if piece is not None]
        structure = b"".join(pieces) if pieces else None
    return parse_stored(_blob(structure), _blob(market), _blob(meta))


def _blob(value: object) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


def parse_stored(
    structure: bytes | None, market: bytes | None, meta: bytes | None
) -> Stored | None:
    """A stored checkpoint from its parts; None when nothing is stored; StateError when only
    part of one is (damage) or it cannot be read."""
    if structure is None and market is None:
        return None
    if structure is None or market is None:
        raise StateError(
            "stored state is incomplete (structure or market part missing); run "
            "`streamer state reset` to start afresh"
        )
    return Stored(
        decode_parts(structure, market),
        decode_meta(meta) if meta is not None else None,
        len(structure) + len(market),
    )


class DirectoryStore:
    """Checkpoints as files in one directory, each replaced atomically.

    The structural part is written as ``structure-<revision>.msgpack``, then the market part
    and the meta together as ``current.msgpack``, which names the revision it belongs to; only
    then are older structure files removed.  A crash between any two steps leaves a
    ``current`` whose structure file is still there.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @property
    def current(self) -> Path:
        return self.directory / "current.msgpack"

    def structure_path(self, revision: int) -> Path:
        return self.directory / f"structure-{revision}.msgpack"

    def read(self) -> Stored | None:
        try:
            current = self.current.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"{self.current}: cannot read the state: {exc.strerror}") from None
        try:
            parts = _current_decoder.decode(current)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise StateError(
                f"{self.current}: cannot be read ({exc}); run `streamer state reset`"
            ) from None
        meta = decode_meta(parts.meta)
        if meta is None:
            raise StateError(f"{self.current}: its meta part cannot be read")
        try:
            structure = self.structure_path(meta.revision).read_bytes()
        except OSError as exc:
            raise StateError(
                f"{self.structure_path(meta.revision)}: cannot read the state: {exc.strerror}"
            ) from None
        return parse_stored(structure, parts.market, parts.meta)

    def write(self, blobs: Blobs) -> None:
        """Make ``blobs`` durable (blocking: call it from a thread)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if blobs.structure is not None:
            _replace(self.structure_path(blobs.revision), blobs.structure)
        _replace(self.current, _current_encoder.encode(_Current(blobs.meta, blobs.market)))
        _sync_directory(self.directory)
        keep = self.structure_path(blobs.revision).name
        for old in self.directory.glob("structure-*.msgpack"):
            if old.name != keep:
                old.unlink(missing_ok=True)

    def delete(self) -> None:
        self.current.unlink(missing_ok=True)
        for old in self.directory.glob("structure-*.msgpack"):
            old.unlink(missing_ok=True)


class _Current(msgspec.Struct, frozen=True):
    meta: bytes
    market: bytes


_current_encoder = msgspec.msgpack.Encoder()
_current_decoder = msgspec.msgpack.Decoder(_Current)


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (temporary file, fsync, rename)."""
    temporary = path.with_suffix(".tmp")
    with temporary.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
