"""Operator tools behind ``simulate``, ``replay``, ``watch``, ``demo`` and ``bench e2e``."""
