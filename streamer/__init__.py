"""streamer: a streaming market-data index calculator."""

__version__ = "0.1.0"
