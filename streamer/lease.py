"""The writer lease of a shard: exactly one replica publishes, and an old one never can again.

Several replicas of a shard run warm; the one holding the lease in Redis publishes. The lease
is one key (``KeyLayout.lease()``) whose value is ``<holder>|<epoch>`` with a time to live:
taken with a set-if-absent (or over the holder's own earlier incarnation: the same replica
restarted), renewed every third of its TTL, released on a clean shutdown. Each acquisition
increments the epoch (``KeyLayout.lease_epoch()``, which never expires): the fencing token.

Fencing: every publish transaction is guarded by the lease. The writer WATCHes the lease key
and reads it in the same round trip; only if it still holds its own value does it send the
MULTI ... EXEC, and Redis refuses the EXEC (a nil reply) if the key changed or expired after
the WATCH. So a writer that was paused (GC, SIGSTOP, a partition) past its TTL, and whose
lease a standby took (a new value, a higher epoch), has every later write refused: it can
never write over the new leader. A refusal makes it a standby.

This module is the policy (when to acquire, renew, give up; pure, with the time passed in);
the Redis side is in ``streamer.publish``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["leader", "standby"]
ROLES: tuple[Role, ...] = ("leader", "standby")

# KEYS: lease, epoch; ARGV: holder, ttl_ms.  Taken when free, or held by this same holder (a
# restarted replica takes its lease back at once; its old incarnation is fenced by the new
# epoch).  Returns {epoch, value}, or {0, the current value, its remaining ms}.
ACQUIRE_LUA = b"""#!lua
local current = redis.call('GET', KEYS[1])
if current then
  local holder = string.match(current, '^(.*)|%d+$')
  if holder ~= ARGV[1] then
    return {0, current, redis.call('PTTL', KEYS[1])}
  end
end
local epoch = redis.call('INCR', KEYS[2])
local value = ARGV[1] .. '|' .. epoch
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {epoch, value}
"""
# KEYS: lease; ARGV: value, ttl_ms.  1: renewed; 0: no longer ours.
RENEW_LUA = b"""#!lua
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# KEYS: lease; ARGV: value.  Released only if still ours.
RELEASE_LUA = b"""#!lua
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(slots=True)
class LeaseState:
    """What this replica knows of its lease, in its own monotonic time (ns).

    ``valid_until`` is conservative: counted from when the acquire or renew request was sent,
    not from when Redis applied it, so it never outlives the key in Redis."""

    holder: str
    ttl_ns: int
    value: bytes = b""  # "<holder>|<epoch>" while leader
    epoch: int = 0
    valid_until: int = 0
    next_attempt: int = 0  # when to renew (leader) or try to acquire (standby)
    other: str = ""  # the holder seen when we could not acquire

    @property
    def role(self) -> Role:
        return "leader" if self.value else "standby"

    def is_valid(self, now: int) -> bool:
        """Leader, with time left on the lease."""
        return bool(self.value) and now < self.valid_until

    def due(self, now: int) -> bool:
        return now >= self.next_attempt

    def acquired(self, value: bytes, epoch: int, sent_at: int) -> None:
        self.value, self.epoch, self.other = value, epoch, ""
        self.valid_until = sent_at + self.ttl_ns
        self.next_attempt = sent_at + self.ttl_ns // 3

    def renewed(self, sent_at: int) -> None:
        self.valid_until = sent_at + self.ttl_ns
        self.next_attempt = sent_at + self.ttl_ns // 3

    def refused(self, other: str, remaining_ns: int, now: int) -> None:
        """Someone else holds it: try again when it would expire (or a third of a TTL)."""
        self.lost()
        self.other = other
        wait = remaining_ns if remaining_ns > 0 else self.ttl_ns // 3
        self.next_attempt = now + min(wait, self.ttl_ns // 3) + 1_000_000

    def lost(self) -> None:
        self.value, self.valid_until = b"", 0
