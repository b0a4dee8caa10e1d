"""``streamer demo``: broker, Redis, simulated feed, the service and the live view, in one go.

Starts private mosquitto and redis-server on free loopback ports, points the service, the
gateway and the feed at them through the environment (``STREAMER_MQTT_URL``,
``STREAMER_REDIS_URL``, ``STREAMER_METRICS_LISTEN``, ``STREAMER_GATEWAY_LISTEN``), runs
``watch`` in the foreground until Ctrl-C (its footer keeps the gateway's page address on
screen, and a desktop browser is opened on it when there is a display), and then stops
everything it started, in order, also when something fails along the way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
import webbrowser
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import redis
from rich.console import Console

import streamer
from streamer.commands.watch import Link, WatchTarget, watch
from streamer.config import Settings, load_settings
from streamer.localservices import LocalMosquitto, LocalRedis, free_port
from streamer.tools.processes import (
    ChildProcess,
    ChildProcessError,
    child_environment,
    streamer_command,
)
from streamer.tools.scrape import metrics_url
from streamer.tools.shutdown import StopSignal, stop_on_signals

HELP = (
    "local demo: private mosquitto and redis-server, a simulated feed, the service and the "
    "live view, until Ctrl-C"
)

DEMO_CONFIG = Path("config") / "streamer.toml"
FIRST_LEVEL_WAIT_S = 10.0  # the service publishes its seeded levels right after start-up


def demo_links(*, broker: str, redis_url: str, metrics: str, gateway: str) -> list[Link]:
    """What the footer of the live view keeps on screen, as (label, url), in this order.

    A new endpoint of the demo (a gateway, say) is one more entry here; the footer packs the
    entries into as few lines as the terminal's width allows.
    """
    return [
        ("page", gateway),
        ("broker", broker),
        ("redis", redis_url),
        ("metrics", metrics),
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="service config with the index universe "
        "(default config/streamer.toml of this checkout)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=2000.0,
        metavar="TICKS_PER_S",
        help="simulated ticks per second (default 2000)",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=30.0,
        metavar="X",
        help="simulated trading seconds per real second, so that prices move visibly (default 30)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="stop by itself after S seconds (default: at Ctrl-C)",
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the working directory with the logs after exit",
    )


def default_config() -> Path:
    """config/streamer.toml in the current directory, else in the checkout streamer runs from."""
    if DEMO_CONFIG.is_file():
        return DEMO_CONFIG
    return Path(streamer.__file__).resolve().parent.parent / DEMO_CONFIG


def main(args: argparse.Namespace) -> int:
    config_path = Path(args.config) if args.config else default_config()
    settings = load_settings(config_path)  # a bad config stops us before anything starts
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="streamer-demo-"))
    failed = True
    try:
        with stop_on_signals() as stop, ExitStack() as stack:
            console.print("[bold]streamer demo[/bold]: starting mosquitto and redis-server ...")
            broker = stack.enter_context(LocalMosquitto(workdir=workdir / "mosquitto"))
            redis_server = stack.enter_context(LocalRedis(workdir=workdir / "redis"))
            listen = f"127.0.0.1:{free_port()}"
            gateway_listen = f"127.0.0.1:{free_port()}"
            gateway_url = f"http://{gateway_listen}/"
            env = child_environment(
                {
                    "STREAMER_MQTT_URL": broker.url,
                    "STREAMER_REDIS_URL": redis_server.url,
                    "STREAMER_METRICS_LISTEN": listen,
                    "STREAMER_GATEWAY_LISTEN": gateway_listen,
                }
            )
            config = str(config_path.resolve())
            service = ChildProcess(
                "service",
                streamer_command("run", "--config", config),
                env,
                workdir / "service.log",
            )
            feed = ChildProcess(
                "simulate",
                streamer_command(
                    "simulate",
                    "--config",
                    config,
                    "--rate",
                    str(args.rate),
                    "--time-scale",
                    str(args.time_scale),
                ),
                env,
                workdir / "simulate.log",
            )
            gateway = ChildProcess(
                "gateway",
                streamer_command("gateway", "--config", config),
                env,
                workdir / "gateway.log",
            )
            # Stopped in reverse order: the feed first, then the service (which drains), then
            # the gateway (which only reads).
            stack.callback(gateway.stop)
            stack.callback(service.stop)
            stack.callback(feed.stop)
            console.print("starting the service ...")
            service.start().wait_for_metrics(metrics_url(listen))
            gateway.start().wait_for_metrics(f"{gateway_url}metrics")
            feed.start()
            _print_banner(
                console,
                settings,
                broker.url,
                redis_server.url,
                listen=listen,
                gateway=gateway_url,
                workdir=workdir,
            )
            _open_page(gateway_url)

            def health() -> str | None:
                for child in (service, gateway, feed):
                    if not child.alive():
                        return (
                            f"{child.name} exited with code {child.exit_code()}; "
                            f"last lines of {child.log_path}:\n{child.log_tail()}"
                        )
                return None

            target = WatchTarget(
                url=redis_server.url,
                password=None,
                prefix=settings.redis.prefix,
                known=tuple(s for d in settings.indices for s in d.series_ids()),
            )
            _wait_for_first_level(target, settings, stop, health)
            problem = watch(
                target,
                stop,
                console,
                duration_s=args.duration,
                title=f"streamer demo · {len(settings.indices)} indices · "
                f"{args.rate:,.0f} ticks/s simulated",
                footer=lambda: "Ctrl-C to stop",
                links=demo_links(
                    broker=broker.url,
                    redis_url=redis_server.url,
                    metrics=metrics_url(listen),
                    gateway=gateway_url,
                ),
                health=health,
            )
            console.print()
            if problem:
                console.print(f"[red]streamer demo: {problem}[/red]")
                return 1
            console.print(
                "stopping the feed, the service, the gateway, redis-server and mosquitto ..."
            )
            stack.close()
            feed_summary = _last_line(feed.log_path, "simulate:")
            if feed_summary:
                console.print(feed_summary)
            if service.returncode not in (0, None):
                console.print(f"[red]the service exited with code {service.returncode}[/red]")
                return 1
            failed = False
            return 0
    except ChildProcessError as exc:
        console.print(f"[red]streamer demo: {exc}[/red]")
        return 1
    finally:
        if failed or args.keep_logs:
            console.print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _open_page(url: str) -> None:
    """A browser on the page when this is a desktop session; over SSH or in a container the
    footer's address is what to open."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return
    with contextlib.suppress(Exception):  # no browser is no failure of the demo
        webbrowser.open_new_tab(url)


def _print_banner(
    console: Console,
    settings: Settings,
    mqtt: str,
    redis_url: str,
    *,
    listen: str,
    gateway: str,
    workdir: Path,
) -> None:
    series = sum(len(d.series_ids()) for d in settings.indices)
    symbols = len({c.symbol for d in settings.indices for c in d.constituents})
    console.print(
        f"[bold green]running[/bold green]: {len(settings.indices)} indices "
        f"({series} series) over {symbols} symbols\n"
        f"  broker   {mqtt}\n"
        f"  redis    {redis_url}  (prefix {settings.redis.prefix!r}: "
        f"try `redis-cli -u {redis_url} hgetall {settings.redis.prefix}:index:"
        f"{settings.indices[0].id}`)\n"
        f"  page     {gateway}  (the gateway: live table and charts in a browser)\n"
        f"  metrics  {metrics_url(listen)}\n"
        f"  logs     {workdir}"
    )


def _wait_for_first_level(
    target: WatchTarget,
    settings: Settings,
    stop: StopSignal,
    health: Callable[[], str | None],
) -> None:
    """Until the first index has a level in Redis, so the first frame is not a warning that
    the prefix holds no series; bounded (the view then says what it finds) and never past a
    child's exit or Ctrl-C."""
    key = f"{target.prefix}:index:{settings.indices[0].series_ids()[0]}"
    client = target.connect()
    deadline = time.monotonic() + FIRST_LEVEL_WAIT_S
    try:
        while time.monotonic() < deadline and not stop.is_set() and health() is None:
            try:
                if client.exists(key):
                    return
            except redis.RedisError:
                pass
            stop.wait(0.1)
    finally:
        client.close()


def _last_line(path: Path, prefix: str) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return next((line for line in reversed(lines) if line.startswith(prefix)), "")
