"""``streamer gateway --config PATH``: the HTTP/SSE/WebSocket gateway, until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse

from streamer.config import load_settings

HELP = (
    "serve the published levels over HTTP: REST, Server-Sent Events, WebSocket and a live "
    "page (reads Redis only)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, metavar="PATH", help="service config (TOML), [gateway]"
    )


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    # Imported here so that a config error is reported before paying for aiohttp.
    from streamer.gateway.server import run_gateway

    return run_gateway(settings)
