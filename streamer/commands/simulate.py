"""``streamer simulate``: publish a realistic simulated feed for every configured constituent."""

from __future__ import annotations

import argparse
import logging

from streamer.config import load_settings
from streamer.tools.feed import FeedUniverse, GbmMarket
from streamer.tools.fund_listings import ListingQuoter
from streamer.tools.mqtt_publisher import BrokerEndpoint, MqttPublisher
from streamer.tools.shutdown import stop_on_signals
from streamer.tools.simulator import FeedSimulator, SimulationOptions

HELP = (
    "publish a simulated feed (correlated GBM, 0.01 ticks, FX pairs) for every constituent "
    "of the configured indices, at a steady rate"
)

DEFAULT_CONFIG = "config/streamer.toml"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        metavar="PATH",
        help=f"service config naming the indices and the broker (default {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--mqtt-url",
        metavar="URL",
        help="broker to publish to (default: the config's [mqtt].url, or STREAMER_MQTT_URL)",
    )
    parser.add_argument(
        "--rate",
        type=_positive_float,
        default=1000.0,
        metavar="TICKS_PER_S",
        help="ticks per second (default 1000)",
    )
    parser.add_argument(
        "--batch",
        type=_positive_int,
        default=1,
        metavar="N",
        help="ticks per message: 1 publishes on ticks/<symbol>, more publishes "
        "arrays on ticks/batch (default 1)",
    )
    parser.add_argument(
        "--format",
        choices=("json", "msgpack"),
        default="json",
        help="payload encoding (default json)",
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        metavar="S",
        help="stop after S seconds (default: run until Ctrl-C)",
    )
    parser.add_argument("--seed", type=int, help="random seed, for a reproducible feed")
    parser.add_argument(
        "--time-scale",
        type=_positive_float,
        default=1.0,
        metavar="X",
        help="simulated trading seconds per real second; >1 makes prices move "
        "faster than a real market (default 1)",
    )
    parser.add_argument(
        "--fx-interval",
        type=_positive_float,
        default=0.5,
        metavar="S",
        help="seconds between FX updates (default 0.5)",
    )


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    universe = FeedUniverse.from_settings(settings)
    endpoint = (
        BrokerEndpoint.from_url(args.mqtt_url, settings.mqtt.password)
        if args.mqtt_url
        else BrokerEndpoint.from_settings(settings)
    )
    options = SimulationOptions(
        rate=args.rate,
        batch=args.batch,
        fmt=args.format,
        duration_s=args.duration,
        time_scale=args.time_scale,
        fx_interval_s=args.fx_interval,
    )
    log.info(
        "simulate starting",
        extra={
            "fields": {
                "broker": endpoint.display,
                "symbols": len(universe.symbols),
                "fx_pairs": ",".join(universe.fx_pairs) or "-",
                "rate": args.rate,
                "batch": args.batch,
                "format": args.format,
            }
        },
    )
    with stop_on_signals() as stop:
        publisher = MqttPublisher(endpoint, reconnect=True, should_stop=stop.is_set)
        with publisher:
            listings = (
                ListingQuoter(settings.funds, universe, args.seed) if settings.funds else None
            )
            simulator = FeedSimulator(
                GbmMarket(universe, seed=args.seed), publisher, options, stop, listings
            )
            report = simulator.run()
    print(report.summary(args.rate), flush=True)
    return 0


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
