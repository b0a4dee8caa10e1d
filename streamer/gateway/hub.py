"""The fan-out: the newest level of every series, and who follows which series.

One Redis subscription (``streamer.gateway.feed``) feeds :meth:`Hub.publish`; each update
replaces its series' cached level and is offered to the clients following that series, which
is a dictionary write per client (``streamer.gateway.client``).  The cache is also the
snapshot a new client gets first, taken in the same step as its registration, so no update
falls between the snapshot and the stream.
"""

from __future__ import annotations

from collections.abc import Iterable

from streamer.gateway.client import ClientStream, State
from streamer.gateway.records import LevelUpdate
from streamer.outputs import SeriesEntry


class Hub:
    def __init__(self) -> None:
        self.latest: dict[str, LevelUpdate] = {}
        self.directory: dict[str, SeriesEntry] = {}
        self.state: State = "disconnected"
        self._followers: dict[str, set[ClientStream]] = {}
        self.clients: set[ClientStream] = set()

    def known(self, series: str) -> bool:
        return series in self.directory or series in self.latest

    def all_series(self) -> list[str]:
        return sorted(set(self.directory) | set(self.latest))

    def publish(self, updates: Iterable[LevelUpdate]) -> int:
        """Cache and fan out each update that is newer than the cached one; returns how many
        were."""
        fresh = 0
        for update in updates:
            current = self.latest.get(update.series)
            if current is not None and not update.is_newer_than(current):
                continue
            self.latest[update.series] = update
            fresh += 1
            for client in self._followers.get(update.series, ()):
                client.offer(update)
        return fresh

    def set_state(self, state: State) -> None:
        if state == self.state:
            return
        self.state = state
        for client in self.clients:
            client.offer_state(state)

    def attach(self, client: ClientStream, resume: dict[str, int]) -> None:
        """Register ``client`` and put its snapshot in its slots: the current state, then the
        newest level of each of its series, except those whose seq it already has
        (``resume``, from its Last-Event-ID)."""
        self.clients.add(client)
        client.offer_state(self.state)
        for series in client.series:
            self._followers.setdefault(series, set()).add(client)
            current = self.latest.get(series)
            if current is None:
                continue
            if resume.get(series) == current.seq:
                client.sent_seq[series] = current.seq  # it has this one: keep it in its id
            else:
                client.offer(current)

    def detach(self, client: ClientStream) -> None:
        self.clients.discard(client)
        for series in client.series:
            followers = self._followers.get(series)
            if followers is not None:
                followers.discard(client)
                if not followers:
                    del self._followers[series]
        client.close()
