"""Figures derived from published series rather than computed tick by tick.

``streamer.derived.tracking``: how closely a fund's NAV follows the index it tracks (tracking
difference and ex-post tracking error), as pure functions over daily series.  Nothing here is
imported by the service.
"""
