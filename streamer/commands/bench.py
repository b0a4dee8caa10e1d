"""``streamer bench kernel|e2e|state|scale``: report performance figures."""

from __future__ import annotations

import argparse
import importlib

HELP = (
    "benchmarks: `kernel` (the pure engine), `e2e` (broker -> service -> Redis), `state`, "
    "`gateway` (SSE clients on streamer gateway), "
    "`scale` (growing universes; --scale-out: one process vs two shards)"
)

_TARGETS = {
    "kernel": "streamer.bench.kernel",
    "e2e": "streamer.bench.e2e",
    "state": "streamer.bench.state",
    "gateway": "streamer.bench.gateway",
    "scale": "streamer.bench.scale",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, module_name in _TARGETS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)


def main(args: argparse.Namespace) -> int:
    module = importlib.import_module(_TARGETS[args.target])
    code: int = module.main(args)
    return code
