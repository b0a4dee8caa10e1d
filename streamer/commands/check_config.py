"""``streamer check-config``: validate the config and every index definition, print a summary."""

from __future__ import annotations

import argparse

from streamer.config import load_settings, redact_url

HELP = "validate config and index definitions; print a summary; exit 0, or 2 with the error"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="PATH", help="service config (TOML)")


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    from streamer.engine import Engine  # after validation: a bad config need not load numpy

    # Building the engine cross-checks the definitions (one currency and seed price per symbol).
    engine = Engine(settings.indices, settings.quality, funds=settings.funds)
    print(f"config {settings.path}: OK")
    print(f"  mqtt    {redact_url(settings.mqtt.url)}  topics {', '.join(settings.mqtt.topics)}")
    print(f"  redis   {redact_url(settings.redis.url)}  prefix {settings.redis.prefix}")
    print(
        f"  metrics {settings.metrics.listen}  publish interval {settings.publish.interval_ms} ms"
    )
    print(
        f"  {len(settings.indices)} indices, {len(engine.series_ids)} series, "
        f"{len(engine.book)} symbols"
    )
    width = max(len(d.id) for d in settings.indices)
    for d in settings.indices:
        currencies = sorted({c.currency or d.currency for c in d.constituents})
        basis = f"divisor {d.divisor:g}" if d.divisor is not None else f"base {d.base_value:g}"
        print(
            f"  {d.id:<{width}}  {d.method:<5}  {d.currency}  {len(d.constituents):>4} "
            f"constituents  {basis:<20}  variants {','.join(d.variants)}"
            + (
                f"  (constituent currencies {','.join(currencies)})"
                if currencies != [d.currency]
                else ""
            )
        )
    for f in settings.funds:
        print(
            f"  fund {f.id:<{width}}  {f.currency}  {len(f.basket.holdings):>4} holdings  "
            f"tracks {f.tracks}  listing {f.listing}  fee {f.expense_ratio:.2%}  "
            f"iNAV every {f.inav_interval_ms} ms"
        )
    return 0
