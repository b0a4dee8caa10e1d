"""Benchmarks: figures reported by ``streamer bench``, never asserted by tests."""
