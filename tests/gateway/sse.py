"""A minimal Server-Sent Events reader over aiohttp, for the tests (as EventSource parses)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass
class SseEvent:
    kind: str
    data: Any
    id: str | None


class SseStream:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.last_id: str | None = None

    async def next(self, within: float = 10.0) -> SseEvent:
        kind, event_id = "message", None
        data: list[str] = []
        async with asyncio.timeout(within):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\n")
                if line == "":
                    if data:
                        if event_id is not None:
                            self.last_id = event_id
                        return SseEvent(kind, json.loads("\n".join(data)), event_id)
                    kind, event_id = "message", None
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    kind = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    event_id = value

    async def next_level(self, within: float = 10.0) -> dict[str, Any]:
        while True:
            event = await self.next(within)
            if event.kind == "level":
                level: dict[str, Any] = event.data
                return level


async def open_stream(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> SseStream:
    response = await session.get(url, headers=headers or {})
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return SseStream(response)
