"""The calculation core: pure, synchronous, no I/O (never imports asyncio, redis or aiomqtt)."""

from streamer.engine.core import Engine
from streamer.engine.results import AuditRecord, BatchResult, LevelColumns, SeriesLevel

__all__ = ["AuditRecord", "BatchResult", "Engine", "LevelColumns", "SeriesLevel"]
