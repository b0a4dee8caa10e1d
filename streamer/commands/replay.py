"""``streamer replay``: publish recorded messages to the broker, keeping the recorded timing."""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from collections.abc import Iterator, Sequence

from streamer.config import load_settings
from streamer.tools.mqtt_publisher import BrokerEndpoint, MqttPublisher
from streamer.tools.recording import RecordedMessage, RecordingError, read_recording
from streamer.tools.replayer import Replayer
from streamer.tools.shutdown import stop_on_signals

HELP = (
    "publish recorded messages (JSON Lines as `streamer calc` reads them, or CSV "
    "symbol,price,ts) to the broker, each on its topic, honouring the recorded timing"
)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="recordings, replayed one after another: *.csv is "
        "symbol,price[,ts]; anything else JSON Lines",
    )
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="scale recorded time: 2 replays twice as fast (default 1)",
    )
    pace.add_argument(
        "--max-speed",
        action="store_true",
        help="ignore recorded timing, publish as fast as possible",
    )
    parser.add_argument(
        "--max-gap",
        type=float,
        metavar="S",
        help="shorten any recorded pause longer than S seconds to S",
    )
    parser.add_argument(
        "--format",
        choices=("json", "msgpack"),
        default="json",
        help="payload encoding (default json: lines are sent as recorded)",
    )
    broker = parser.add_mutually_exclusive_group()
    broker.add_argument(
        "--mqtt-url",
        metavar="URL",
        help="broker (default STREAMER_MQTT_URL, else mqtt://127.0.0.1:1883)",
    )
    broker.add_argument("--config", metavar="PATH", help="take the broker from a service config")


def main(args: argparse.Namespace) -> int:
    if args.speed <= 0:
        print("streamer replay: --speed must be positive", file=sys.stderr)
        return 2
    if args.config:
        endpoint = BrokerEndpoint.from_settings(load_settings(args.config))
    else:
        endpoint = BrokerEndpoint.from_environment(args.mqtt_url)
    try:
        # Read everything before connecting: a bad line should fail fast, not halfway through.
        records = list(_all_records(args.files))
    except RecordingError as exc:
        print(f"streamer replay: {exc}", file=sys.stderr)
        return 2
    log.info(
        "replay starting",
        extra={
            "fields": {
                "broker": endpoint.display,
                "files": len(args.files),
                "messages": len(records),
                "speed": "max" if args.max_speed else args.speed,
            }
        },
    )
    with stop_on_signals() as stop:
        publisher = MqttPublisher(endpoint, reconnect=True, should_stop=stop.is_set)
        with publisher:
            replayer = Replayer(
                publisher,
                speed=None if args.max_speed else args.speed,
                fmt=args.format,
                max_gap_s=args.max_gap,
                stop=stop,
            )
            report = replayer.run(records)
    print(report.summary(), flush=True)
    return 130 if report.interrupted else 0


def _all_records(files: Sequence[str]) -> Iterator[RecordedMessage]:
    return itertools.chain.from_iterable(read_recording(f) for f in files)
