"""``streamer state show|export|reset``: what the service has stored, and a deliberate reset.

- ``show``: a summary as JSON: when the checkpoint was taken, its size, every index (divisor,
  members, previous closes), pending actions, calendars.
- ``export``: the whole checkpoint as JSON (arrays as lists), for audits and diffs.
- ``reset``: forget the stored state (``--yes``), or only that of some indices
  (``--index ID``, repeatable), which then start afresh from the config at the next start.

A reset refuses while the service seems to be running (a checkpoint younger than three
checkpoint intervals, and not the final one of a clean shutdown): it would write its own
state back over it.  ``--force`` overrides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import msgspec
import numpy as np

from streamer.config import Settings, load_settings
from streamer.engine.arrays import column
from streamer.engine.snapshot import Snapshot, encode_part
from streamer.engine.universe import MARKET_COLUMNS
from streamer.errors import StateError
from streamer.keys import key_layout
from streamer.persistence.checkpoint import Blobs, Meta
from streamer.persistence.stores import READ_STATE_LUA, DirectoryStore, Stored, parse_redis_state

HELP = "show, export or reset the state the service stored (checkpoints)"

_FLOAT_MEMBER_COLUMNS = ("shares", "iwf", "awf", "withholding", "q")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=("show", "export", "reset"))
    parser.add_argument("--config", required=True, metavar="PATH", help="service config (TOML)")
    parser.add_argument(
        "--index", action="append", default=[], metavar="ID", help="only this index (repeatable)"
    )
    parser.add_argument("--yes", action="store_true", help="reset: really forget everything")
    parser.add_argument(
        "--force", action="store_true", help="reset even if the service seems to be running"
    )


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    store = _Store(settings)
    stored = store.read()
    if args.what == "reset":
        return _reset(store, stored, settings, args)
    if stored is None:
        print(json.dumps({"stored": False, "store": store.where}))
        return 0
    if args.what == "show":
        document = _summary(stored, args.index, store.where)
    else:
        document = _export(stored, args.index)
    # msgspec writes NaN (an index not established yet) as null, as the live channel does.
    print(msgspec.json.format(msgspec.json.encode(document), indent=2).decode())
    return 0


class _Store:
    """The configured store, read and written synchronously (a command-line tool)."""

    def __init__(self, settings: Settings) -> None:
        state = settings.state
        if state.store == "none":
            raise StateError("[state] store = none: nothing is stored")
        self.directory = DirectoryStore(state.directory) if state.store == "directory" else None
        self.keys = key_layout(settings)
        self.where = (
            state.directory
            if self.directory
            else f"redis {self.keys.state('structure').removesuffix('structure')}*"
        )
        self._settings = settings

    def _redis(self) -> Any:
        from streamer.redis_clients import sync_client

        return sync_client(self._settings.redis)

    def read(self) -> Stored | None:
        if self.directory is not None:
            return self.directory.read()
        try:
            reply = self._redis().eval(READ_STATE_LUA, 3, *self.keys.state_keys()[:3])
        except Exception as exc:
            raise StateError(f"cannot read the state from redis: {exc}") from None
        return parse_redis_state(reply)

    def write(self, blobs: Blobs) -> None:
        if self.directory is not None:
            self.directory.write(blobs)
            return
        keys = self.keys.state_keys()
        assert blobs.structure is not None
        values = [blobs.structure, blobs.market, blobs.meta, b"%d" % blobs.revision]
        self._redis().mset(dict(zip(keys, values, strict=True)))

    def delete(self) -> None:
        if self.directory is not None:
            self.directory.delete()
        else:
            self._redis().delete(*self.keys.state_keys())


def _summary(stored: Stored, only: list[str], where: str) -> dict[str, Any]:
    s, m, meta = stored.snapshot.structure, stored.snapshot.market, stored.meta
    members = column(s.members["index"], np.int64)
    counts: list[int] = np.bincount(members, minlength=len(s.indices)).tolist()
    indices = []
    for k, record in enumerate(s.indices):
        if only and record.id not in only:
            continue
        indices.append(
            {
                "id": record.id,
                "method": record.method,
                "currency": record.currency,
                "members": counts[k] if k < len(counts) else 0,
                "divisor": record.divisor,
                "pr_close": record.pr_close,
                "tr_close": record.tr_close,
                "ntr_close": record.ntr_close,
                "dividend_points": record.gross_points,
                "net_dividend_points": record.net_points,
            }
        )
    return {
        "stored": True,
        "store": where,
        "format": s.format,
        "revision": s.revision,
        "taken": _iso(meta.taken_ns) if meta else None,
        "market_clock": _iso(meta.market_now) if meta and meta.market_now else None,
        "bytes": stored.size_bytes,
        "symbols": len(s.symbols),
        "fx_rates": m.fx_rates,
        "applied_actions": len(s.applied),
        "pending_actions": [
            {"effective": _iso(p.effective), **msgspec.to_builtins(p.action)} for p in s.pending
        ],
        "calendars": [msgspec.to_builtins(c) for c in s.calendars],
        "indices": indices,
    }


def _export(stored: Stored, only: list[str]) -> dict[str, Any]:
    s, m = stored.snapshot.structure, stored.snapshot.market
    members = {
        name: column(blob, np.float64 if name in _FLOAT_MEMBER_COLUMNS else np.int64).tolist()
        for name, blob in s.members.items()
    }
    market = {
        name: column(m.columns[name], np.float64 if isinstance(fill, float) else np.int64).tolist()
        for name, fill in MARKET_COLUMNS.items()
    }
    structure = msgspec.to_builtins(s)
    structure["members"] = members
    if only:
        keep = {k for k, r in enumerate(s.indices) if r.id in only}
        rows = [i for i, j in enumerate(members["index"]) if j in keep]
        structure["members"] = {name: [values[i] for i in rows] for name, values in members.items()}
        structure["indices"] = [r for r in structure["indices"] if r["id"] in only]
    return {
        "meta": msgspec.to_builtins(stored.meta) if stored.meta else None,
        "structure": structure,
        "market": {**msgspec.to_builtins(m), "columns": market},
    }


def _reset(
    store: _Store, stored: Stored | None, settings: Settings, args: argparse.Namespace
) -> int:
    if stored is None:
        print("streamer state: nothing stored", file=sys.stderr)
        return 0
    meta = stored.meta
    interval_ns = settings.state.checkpoint_interval_s * 1e9
    running = meta is not None and not meta.final
    if (
        running
        and meta
        and not args.force
        and time.time_ns() - meta.taken_ns < 3 * interval_ns + 5e9
    ):
        print(
            "streamer state: the service seems to be running (its last checkpoint is "
            f"{(time.time_ns() - meta.taken_ns) / 1e9:.0f} s old): stop it first, "
            "or pass --force",
            file=sys.stderr,
        )
        return 2
    if not args.index:
        if not args.yes:
            print(
                "streamer state: reset forgets every corporate action and index change "
                "applied since the indices were set up; pass --yes to do it",
                file=sys.stderr,
            )
            return 2
        store.delete()
        print(f"streamer state: stored state deleted ({store.where})")
        return 0
    snapshot = stored.snapshot
    known = {r.id for r in snapshot.structure.indices}
    missing = sorted(set(args.index) - known)
    if missing:
        print(f"streamer state: not in the stored state: {', '.join(missing)}", file=sys.stderr)
        return 2
    blobs = _without(snapshot, set(args.index), meta)
    store.write(blobs)
    print(
        f"streamer state: {', '.join(sorted(args.index))} reset: "
        "they start afresh from the config at the next start"
    )
    return 0


def _without(snapshot: Snapshot, drop: set[str], meta: Meta | None) -> Blobs:
    """The snapshot with some indices (and their memberships) taken out."""
    s, m = snapshot.structure, snapshot.market
    keep = [k for k, r in enumerate(s.indices) if r.id not in drop]
    new_position = np.full(len(s.indices), -1, dtype=np.int64)
    new_position[keep] = np.arange(len(keep))
    index = column(s.members["index"], np.int64)
    rows = new_position[index] >= 0 if len(index) else np.zeros(0, np.bool_)
    members = {}
    for name, blob in s.members.items():
        values = column(blob, np.float64 if name in _FLOAT_MEMBER_COLUMNS else np.int64)
        values = values[rows]
        if name == "index":
            values = new_position[values]
        members[name] = np.ascontiguousarray(values).tobytes()
    revision = s.revision + 1
    structure = msgspec.structs.replace(
        s, revision=revision, members=members, indices=[s.indices[k] for k in keep]
    )
    market = msgspec.structs.replace(m, revision=revision)
    meta_blob = msgspec.msgpack.encode(
        msgspec.structs.replace(meta, revision=revision)
        if meta
        else Meta(1, revision, time.time_ns(), 0, 0, 0, final=True)
    )
    return Blobs(encode_part(structure), encode_part(market), meta_blob, revision)


def _iso(ns: int) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns / 1e9)) + f".{ns % 10**9 // 10**6:03d}Z"
    )
