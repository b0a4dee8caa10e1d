"""A failing task ends the process cleanly, and shutdown always completes within its deadline.

A loop is injected into a real `streamer run` process (the CLI's own path, real servers):
one that raises, and one that swallows its cancellation (what redis-py's timeouts can do on
Python 3.11).  Neither may leave the process running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from streamer.localservices import LocalMosquitto, LocalRedis
from streamer.service import SHUTDOWN_DEADLINE_S, WATCHDOG_GRACE_S
from tests.conftest import write_service_config
from tests.integration.harness import REPO, http_get, wait_for

INJECT = {
    "raises": """
        async def broken(self):
            await asyncio.sleep(0.5)
            raise RuntimeError("injected failure")
    """,
    "stubborn": """
        async def broken(self):
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    pass  # swallowed: a loop that never stops
    """,
}


def start(tmp_path: Path, kind: str, config_path: Path) -> subprocess.Popen[bytes]:
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            from streamer import cli, service

            {inject}

            loops = service.Service._loops
            service.Service._loops = lambda self, server: {{
                **loops(self, server), "injected": broken(self)
            }}
            sys.exit(cli.main(["--log-format", "json", "run", "--config", sys.argv[1]]))
            """
        ).format(inject=textwrap.dedent(INJECT[kind])),
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = (tmp_path / "service.log").open("wb")
    return subprocess.Popen(
        [sys.executable, str(script), str(config_path)], stdout=log, stderr=subprocess.STDOUT,
        env=env,
    )  # fmt: skip


def test_a_failing_task_ends_the_process_with_one_line(tmp_path: Path) -> None:
    with LocalMosquitto() as broker, LocalRedis() as store:
        config = write_service_config(tmp_path, broker.url, store.url)
        process = start(tmp_path, "raises", config.path)
        code = process.wait(timeout=SHUTDOWN_DEADLINE_S + WATCHDOG_GRACE_S + 10)
        text = (tmp_path / "service.log").read_text()
        assert code == 1
        assert "service task failed: stopping" in text and "injected failure" in text
        assert text.strip().splitlines()[-1].startswith("streamer: error: a service task failed")


def test_shutdown_completes_even_when_a_task_swallows_its_cancellation(tmp_path: Path) -> None:
    with LocalMosquitto() as broker, LocalRedis() as store:
        config = write_service_config(tmp_path, broker.url, store.url)
        process = start(tmp_path, "stubborn", config.path)
        try:
            wait_for(lambda: http_get(config.metrics_url + "/healthz")[0] == 200, what="up")
            time.sleep(0.5)
            sent = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=SHUTDOWN_DEADLINE_S + WATCHDOG_GRACE_S + 10)
            took = time.monotonic() - sent
        finally:
            process.kill()
        text = (tmp_path / "service.log").read_text()
        assert code == 0
        assert took < SHUTDOWN_DEADLINE_S + WATCHDOG_GRACE_S + 3
        assert "shutdown overran its deadline: exiting now" in text
