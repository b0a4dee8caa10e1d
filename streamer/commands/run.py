"""``streamer run --config PATH``: the live service, until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse

from streamer.config import load_settings

HELP = "run the service until SIGINT/SIGTERM: MQTT ticks in, index levels to Redis"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="PATH", help="service config (TOML)")
    parser.add_argument(
        "--reset-index",
        action="append",
        default=[],
        metavar="ID",
        help="start this index afresh from the config, discarding its stored state "
        "(repeatable); needed when its definition changed",
    )


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    unknown = sorted(set(args.reset_index) - {d.id for d in settings.indices})
    if unknown:
        print(f"streamer: --reset-index: no such index in the config: {', '.join(unknown)}")
        return 2
    # Imported here so that a config error is reported before paying for aiomqtt and redis.
    from streamer.service import run_service

    return run_service(settings, reset_indices=args.reset_index)
