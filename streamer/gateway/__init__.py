"""``streamer gateway``: the published levels for browsers and other HTTP clients.

A separate process, scaled apart from the calculator, that only reads Redis: one
subscription to the all-series channel feeds every client (``hub``), each client gets a
conflating slot per series and a writer of its own (``client``), and aiohttp serves the REST
API, Server-Sent Events, WebSocket and the page (``app``).
"""
