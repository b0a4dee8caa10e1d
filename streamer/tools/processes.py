"""Child processes the demo and the benchmark start: ``streamer run`` and ``streamer simulate``.

Each child gets its own session (a Ctrl-C in the terminal reaches only us, and we stop the
children in order: feed first, then the service, which drains), a log file, and a kernel
promise to receive SIGTERM if we die without cleaning up.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import streamer
from streamer.errors import StreamerError
from streamer.tools.scrape import ScrapeError, scrape


class ChildProcessError(StreamerError):
    """A child process failed to start or died."""


def streamer_command(*args: str) -> list[str]:
    """The command line running ``streamer ARGS`` with this interpreter (no PATH lookup)."""
    return [sys.executable, "-m", "streamer.cli", *args]


def child_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """Our environment plus ``overrides``, minus credentials meant for another broker/Redis."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith(("STREAMER_MQTT_PASSWORD", "STREAMER_REDIS_PASSWORD")))
    }
    # Children run the very code we run, installed or not.
    package_root = str(Path(streamer.__file__).resolve().parent.parent)
    paths = [package_root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(overrides)
    return env


def _die_with_parent() -> None:
    # Between fork and exec: SIGTERM this child if the parent dies (Linux prctl PDEATHSIG).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)


class ChildProcess:
    """One child with its output in ``log_path``."""

    def __init__(
        self, name: str, command: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> None:
        self.name = name
        self.command = list(command)
        self.env = dict(env)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.returncode: int | None = None

    def start(self) -> ChildProcess:
        self._log = self.log_path.open("ab")
        on_main_thread = threading.current_thread() is threading.main_thread()
        self._process = subprocess.Popen(
            self.command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if on_main_thread else None,  # noqa: PLW1509
        )
        return self

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ChildProcessError(f"{self.name} was not started")
        return self._process.pid

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def exit_code(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def wait_for_metrics(self, url: str, timeout_s: float = 20.0) -> None:
        """Until ``url`` serves metrics; raises with the log tail if the child dies first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise ChildProcessError(
                    f"{self.name} exited with code {self.exit_code()}: {self.log_tail()}"
                )
            try:
                scrape(url, timeout=0.5)
                return
            except ScrapeError:
                time.sleep(0.05)
        raise ChildProcessError(f"{self.name} did not serve {url} within {timeout_s:.0f} s")

    def peak_rss_bytes(self) -> int | None:
        """The child's peak resident set size so far (Linux ``VmHWM``)."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text(encoding="ascii")
        except (OSError, ChildProcessError):
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        process = self._process
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5.0)
            self.returncode = process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.returncode

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty log)"
