"""Durable state: checkpoints of the engine and what is needed to continue exactly after one.

A checkpoint is the engine's snapshot (``engine.snapshot``: a structural part and a market
data part) plus a small ``Meta`` document: when it was taken, the market clock, and the
revision it belongs to.  It lives in Redis beside the output (``P:state:*``, written by the
same script call as the levels that reflect it) or in a local directory (written, fsynced and
renamed before those levels are published).
"""
