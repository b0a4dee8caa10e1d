"""One Redis connection carrying several commands at once, their replies matched in order.

redis-py's client holds a connection until the reply of its command has come back, so a
publish cycle ready while the previous one is on its way waits a whole round trip (on a
small VM a round trip is two CPU wake-ups, 0.3-0.6 ms).  Redis answers the commands of one
connection in the order it received them, so a command can be written the moment it is
ready and its reply found by position: this is the pipelining of RESP itself.

The connection is made by redis-py from the client's pool settings (host, TLS, AUTH, SELECT,
protocol handshake); this module only writes packed commands and reads replies in a task of
its own.  Any failure fails every command in flight and closes the pipe; the next ``open``
starts a fresh connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from streamer.errors import StreamerError


class PipeError(StreamerError):
    """The pipe failed (connection lost, refused, or an error reply)."""


class ReplyError(PipeError):
    """Redis answered a command with an error (the connection is fine): e.g. OOM when it is
    out of memory, READONLY when it was restarted as a replica."""


class Reply(NamedTuple):
    value: Any
    received_ns: int  # clock at the reply's arrival: the command's acknowledgement


def pack(*args: bytes) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return b"".join(parts)


class CommandPipe:
    """Packed commands written as they come on one connection; a reader task resolves each
    command's future with its reply, in order."""

    def __init__(self, client: aioredis.Redis, clock: Callable[[], int] = time.time_ns) -> None:
        self._client = client
        self._clock = clock
        self._connection: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: deque[asyncio.Future[Reply]] = deque()
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def is_open(self) -> bool:
        return self._connection is not None

    async def open(self) -> None:
        pool = self._client.connection_pool
        # No socket timeout: a reply is awaited by the reader task for as long as it takes;
        # the caller bounds how long it waits for each one.
        connection: Any = pool.connection_class(
            **{**pool.connection_kwargs, "socket_timeout": None}
        )
        try:
            await connection.connect()
        except (RedisError, OSError) as exc:
            with contextlib.suppress(Exception):
                await connection.disconnect(nowait=True)
            raise PipeError(str(exc) or type(exc).__name__) from exc
        self._connection = connection
        self._reader = asyncio.create_task(self._read(connection), name="redis-pipe-reader")

    async def send(self, command: bytes) -> asyncio.Future[Reply]:
        """Write one packed command; the future resolves with its reply (or fails)."""
        connection = self._connection
        if connection is None:
            raise PipeError("the pipe is not open")
        reply = asyncio.get_running_loop().create_future()
        self._waiting.append(reply)  # before writing: the reader matches replies by position
        try:
            await connection.send_packed_command(command, check_health=False)
        except (RedisError, OSError) as exc:
            await _disconnect(self._fail(PipeError(str(exc) or type(exc).__name__)))
        return reply

    async def call(self, command: bytes) -> Reply:
        """Write one command and wait for its reply."""
        return await (await self.send(command))

    async def _read(self, connection: Any) -> None:
        try:
            while True:
                try:
                    value = await connection.read_response()
                except ResponseError as exc:  # an error reply: it answers one command
                    value = exc
                received_ns = self._clock()
                if not self._waiting:
                    raise PipeError("a reply that no command asked for")
                reply = self._waiting.popleft()
                if reply.done():
                    continue
                if isinstance(value, ResponseError):
                    reply.set_exception(ReplyError(str(value)))
                else:
                    reply.set_result(Reply(value, received_ns))
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError, PipeError) as exc:
            if self._connection is not connection:
                return  # an old connection's reader: its commands were failed already
            error = exc if isinstance(exc, PipeError) else PipeError(str(exc) or "connection lost")
            await _disconnect(self._fail(error))

    def _fail(self, error: PipeError) -> Any:
        """Fail every command in flight and drop the connection (returned, to be closed)."""
        while self._waiting:
            reply = self._waiting.popleft()
            if not reply.done():
                reply.set_exception(error)
        connection, self._connection = self._connection, None
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        return connection

    def abort(self, reason: str) -> None:
        """Give up on the commands in flight (e.g. Redis stopped answering)."""
        connection = self._fail(PipeError(reason))
        if connection is not None:
            closing = asyncio.create_task(_disconnect(connection), name="redis-pipe-close")
            self._closing.add(closing)  # a reference until done: tasks are weakly held
            closing.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        reader = self._reader
        connection = self._fail(PipeError("closed"))
        if reader is not None:
            await asyncio.wait([reader])
        await _disconnect(connection)


async def _disconnect(connection: Any) -> None:
    if connection is not None:
        with contextlib.suppress(RedisError, OSError):
            await connection.disconnect(nowait=True)
