"""Every Redis key and channel name the service writes, in one place (pure: no I/O).

:class:`KeyLayout` names them for one prefix ``P`` (``[redis].prefix``) and, optionally, one
shard, for a single Redis instance or a Redis Cluster:

    method               single, no shard        single, shard "a"        cluster, shard "a"
                         (today's names)
    -------------------  ----------------------  -----------------------  -----------------------
    index(S)             P:index:S               P:index:S                {P:a}:index:S
    fund(F)              P:fund:F                P:fund:F                 {P:a}:fund:F
    navs(F)              P:navs:F                P:navs:F                 {P:a}:navs:F
    history(S)           P:history:S             P:history:S              {P:a}:history:S
    closes(S)            P:closes:S              P:closes:S               {P:a}:closes:S
    bars(S)              P:bars:1m:S             P:bars:1m:S              {P:a}:bars:1m:S
    actions()            P:actions               P:actions                {P:a}:actions
    actions_written()    P:actions:written       P:actions:written        {P:a}:actions:written
    state(part)          P:state:part            P:shard:a:state:part     {P:a}:state:part
    lease()              P:lease                 P:shard:a:lease          {P:a}:lease
    lease_epoch()        P:lease:epoch           P:shard:a:lease:epoch    {P:a}:lease:epoch
    directory()          P:series                P:series                 P:series
    levels_channel()     P:levels                P:levels                 P:levels
    series_channel(S)    P:levels:S              P:levels:S               P:levels:S

(``part`` is one of ``structure``, ``market``, ``meta``, ``revision``; in cluster mode without
a shard the tag is ``{P}``: ``{P}:index:S``, ``{P}:state:part``, ...)  For example, with the
shipped prefix: ``KeyLayout("streamer", "shard-a", cluster=True).index("US500")`` is
``{streamer:shard-a}:index:US500``, and ``KeyLayout("streamer").index("US500")`` is today's
``streamer:index:US500``.

**Single instance.** Without a shard every name is exactly the public interface (README,
"Output (Redis)").  With a
shard the outputs keep today's names (shards write disjoint series; ``P:actions`` entries and
``P:actions:written`` members carry the index, so they stay disjoint too) and only what is the
shard's own moves under ``P:shard:<name>:``: its checkpoint and its lease.  Two shards sharing
``P:state:*`` would each restore the other's checkpoint, drop its indices and overwrite it.

**Redis Cluster.** Everything one publish cycle of one shard touches (the hashes, streams and
set of its series, its checkpoint and its lease: :meth:`KeyLayout.cycle_keys`) carries the
hash tag ``{P:<shard>}``, so it is all in one slot and the cycle stays one atomic script call
on one node.  The script must say which node: declare :meth:`KeyLayout.lease` as ``KEYS[1]``
(redis-py routes on it; with no key it goes to a random node, which refuses keys it does not
serve) and start it with ``#!lua``, so that Redis refuses any name outside that slot.  An
old-style script (no shebang) may touch any key that happens to be on the same node, which
works until the first resharding.  A shard is the unit of placement: one shard's keys are on
one master, and spreading load over masters takes several shards.

The **directory** ``P:series`` is a hash with one field per series: the series' entry
(:meth:`KeyLayout.directory_entry`, e.g. JSON-encoded) naming its shard, keys and channel.
Consumers read it rather than rebuild names, so they need not know the layout, the shards or
the mode.  It is not part of the cycle (a shard writes its series' fields when it starts
serving them; they change only with the configuration), so it needs no tag and is one key for
every shard.  On a single instance without a shard the entries name today's keys.

**Pub/sub channels are not keys.**  This layout publishes with classic ``PUBLISH`` on
``P:levels`` in both modes: on a cluster every node forwards every message to its subscribers
over the cluster bus, so a consumer subscribes on any node, as today, and sees every shard's
levels on one channel.  The price is bus traffic: each message goes to every node, so it grows
with nodes times the publish rate.  Sharded pub/sub (Redis 7: ``SPUBLISH``/``SSUBSCRIBE``)
keeps a message on its slot's master and replicas, which scales with nodes, but a channel then
belongs to a slot (it would be ``{P:<shard>}:levels``, to be allowed inside the cycle script),
so consumers subscribe once per shard, on the node serving it, and follow resharding.  At
index publish rates (hundreds of small messages a second) the broadcast is cheap, and one
channel for all shards keeps the interface, hence ``PUBLISH``.  ``series_channel`` (one
channel per series) is for consumers that want only some series (a dashboard, the gateway).

On a cluster, an ACL for the service must grant the tagged names too:
``~streamer:* ~{streamer:* &streamer:*``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamer.config import Settings

STATE_PARTS = ("structure", "market", "meta", "revision")

# Index ids are [A-Za-z0-9._-]{1,64} (config), series add ".TR"/".NTR"; shard names the same
# (deploy/k8s adds stricter rules for them, as Kubernetes object names).
_NAME = re.compile(r"[A-Za-z0-9._-]{1,72}")


def _check_name(kind: str, value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"{kind} must match [A-Za-z0-9._-]{{1,72}}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """The names for one prefix, one shard (or none) and one kind of Redis (see the module)."""

    prefix: str
    shard: str | None = None
    cluster: bool = False

    def __post_init__(self) -> None:
        if not self.prefix or any(ch.isspace() or not ch.isprintable() for ch in self.prefix):
            raise ValueError(f"prefix must be non-empty printable text, got {self.prefix!r}")
        if self.shard is not None:
            _check_name("shard", self.shard)
        if self.cluster and ("{" in self.prefix or "}" in self.prefix):
            # Redis hashes the text between the first "{" and the next "}".
            raise ValueError(f"a cluster prefix must not contain braces, got {self.prefix!r}")

    # -- the two bases ----------------------------------------------------------------------

    @property
    def hash_tag(self) -> str | None:
        """What Redis Cluster hashes (``P:<shard>``, or ``P``); None on a single instance."""
        if not self.cluster:
            return None
        return self.prefix if self.shard is None else f"{self.prefix}:{self.shard}"

    @property
    def output_base(self) -> str:
        """What the per-series keys and the actions start with: ``P``, or ``{P:<shard>}``."""
        return self.prefix if self.hash_tag is None else f"{{{self.hash_tag}}}"

    @property
    def shard_base(self) -> str:
        """What the shard's own keys (checkpoint, lease) start with: ``P``, ``P:shard:<shard>``
        or ``{P:<shard>}``; the same as :attr:`output_base` except on a sharded single Redis."""
        if self.cluster or self.shard is None:
            return self.output_base
        return f"{self.prefix}:shard:{self.shard}"

    # -- keys -------------------------------------------------------------------------------

    def index(self, series: str) -> str:
        """Hash: the series' latest level and its fields."""
        return f"{self.output_base}:index:{_check_name('series', series)}"

    def history(self, series: str) -> str:
        """Stream: the series' raw levels, sampled (``[publish] history_interval_ms``)."""
        return f"{self.output_base}:history:{_check_name('series', series)}"

    def closes(self, series: str) -> str:
        """Stream: one entry per official close of the series."""
        return f"{self.output_base}:closes:{_check_name('series', series)}"

    def bars(self, series: str) -> str:
        """Stream: the series' minute bars (open, high, low, close of its level)."""
        return f"{self.output_base}:bars:1m:{_check_name('series', series)}"

    def fund(self, fund: str) -> str:
        """Hash: a fund's live figures (iNAV, listing, premium, intraday TD, ...)."""
        return f"{self.output_base}:fund:{_check_name('fund', fund)}"

    def navs(self, fund: str) -> str:
        """Stream: one entry per official NAV of a fund (``session``, ``nav``, ...)."""
        return f"{self.output_base}:navs:{_check_name('fund', fund)}"

    def actions(self) -> str:
        """Stream: one entry per applied corporate action and index."""
        return f"{self.output_base}:actions"

    def actions_written(self) -> str:
        """Set: the ``id|index`` of every entry written to :meth:`actions`."""
        return f"{self.output_base}:actions:written"

    def state(self, part: str) -> str:
        """String: one part of the checkpoint (one of :data:`STATE_PARTS`)."""
        if part not in STATE_PARTS:
            raise ValueError(f"state part must be one of {', '.join(STATE_PARTS)}, got {part!r}")
        return f"{self.shard_base}:state:{part}"

    def state_keys(self) -> list[str]:
        """The checkpoint's keys, in :data:`STATE_PARTS` order."""
        return [self.state(part) for part in STATE_PARTS]

    def lease(self) -> str:
        """The shard's writer lease (with its epoch, the fencing token); ``KEYS[1]`` of the
        cycle script on a cluster."""
        return f"{self.shard_base}:lease"

    def lease_epoch(self) -> str:
        """Counter: the lease's epoch, +1 per acquisition (the fencing token); never expires."""
        return f"{self.shard_base}:lease:epoch"

    def directory(self) -> str:
        """Hash: series -> its :meth:`directory_entry`; one key for every shard."""
        return f"{self.prefix}:series"

    # -- channels (not keys) ----------------------------------------------------------------

    def levels_channel(self) -> str:
        """Pub/sub channel (classic PUBLISH, in both modes): every series' levels."""
        return f"{self.prefix}:levels"

    def series_channel(self, series: str) -> str:
        """Pub/sub channel for one series: its levels, one JSON object per publish."""
        return f"{self.prefix}:levels:{_check_name('series', series)}"

    # -- for the writer and for consumers ---------------------------------------------------

    def cycle_keys(self, series: Iterable[str], funds: Iterable[str] = ()) -> list[str]:
        """Every key one publish cycle of this shard may touch, for ``series`` and ``funds``."""
        keys = [self.lease(), self.lease_epoch(), *self.state_keys(), self.actions(),
                self.actions_written()]  # fmt: skip
        for name in series:
            keys += [self.index(name), self.history(name), self.closes(name), self.bars(name)]
        for fund in funds:
            keys += [self.fund(fund), self.history(fund), self.navs(fund)]
        return keys

    def directory_entry(self, series: str) -> dict[str, str]:
        """What :meth:`directory` holds for ``series``: its shard ("" for none), its keys and
        the channels its levels go to."""
        return {
            "shard": self.shard or "",
            "index": self.index(series),
            "history": self.history(series),
            "closes": self.closes(series),
            "bars": self.bars(series),
            "actions": self.actions(),
            "channel": self.levels_channel(),
            "series_channel": self.series_channel(series),
        }


def key_layout(settings: Settings) -> KeyLayout:
    """The names of a config's keys: its prefix, its shard, single instance or cluster."""
    return KeyLayout(
        settings.redis.prefix, settings.shard.name or None, cluster=settings.redis.cluster
    )
