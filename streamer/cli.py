"""Entry point: parses the command line, configures logging (only here) and maps errors to exits.

Subcommands live in ``streamer.commands.<name>``, imported only when chosen so that a quick
command such as ``check-config`` does not pay for importing redis or aiomqtt.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from streamer import __version__
from streamer.errors import ConfigError, StateError, StreamerError
from streamer.logs import JsonLogFormatter, TextLogFormatter

# name -> module under streamer.commands
COMMANDS: dict[str, str] = {
    "run": "run",
    "check-config": "check_config",
    "calc": "calc",
    "simulate": "simulate",
    "replay": "replay",
    "watch": "watch",
    "demo": "demo",
    "bench": "bench",
    "state": "state",
    "tracking": "tracking",
    "gateway": "gateway",
}

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def configure_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if fmt == "json" else TextLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # matplotlib (the tracking chart) says at INFO that it built its font cache, on a new
    # machine's first chart: not ours to report.
    logging.getLogger("matplotlib").setLevel(max(root.level, logging.WARNING))


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"streamer.commands.{COMMANDS[name]}")


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamer",
        description="Streaming market-data index calculator: MQTT ticks in, index levels to Redis.",
    )
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log line format (json for log shippers)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        # Only the chosen command's module is imported; the others get a bare entry for --help.
        if name == selected:
            module = _load(name)
            p = sub.add_parser(name, help=module.HELP, description=module.HELP)
            module.add_arguments(p)
        else:
            sub.add_parser(name, help=_short_help(name), add_help=False)
    return parser


def _short_help(name: str) -> str:
    return {
        "run": "run the service until SIGINT/SIGTERM",
        "check-config": "validate config and index definitions, print a summary",
        "calc": "offline calculator over JSON Lines message files",
        "simulate": "publish a simulated tick feed to the broker",
        "replay": "replay recorded messages to the broker",
        "watch": "live terminal view of published index levels",
        "demo": "local demo: broker, Redis, feed, service and live view",
        "bench": "benchmarks (kernel, e2e)",
        "state": "show, export or reset the stored state",
        "tracking": "fund tracking difference and tracking error against its index",
        "gateway": "HTTP/SSE/WebSocket gateway and live page for browsers",
    }[name]


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in args_list if a in COMMANDS), None)
    parser = build_parser(selected)
    args = parser.parse_args(args_list)
    configure_logging(args.log_format, args.log_level)
    module = _load(args.command)
    try:
        code: int = module.main(args)
    except ConfigError as exc:
        print(f"streamer: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StateError as exc:
        print(f"streamer: state error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StreamerError as exc:
        print(f"streamer: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
