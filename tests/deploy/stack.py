"""Real processes for the deployment tests: mosquitto and Redis configured from deploy/, the
service, and a Prometheus server, each on free loopback ports."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from streamer.cli import COMMANDS
from streamer.localservices import (
    LocalMosquitto,
    LocalRedis,
    LocalServiceError,
    find_executable,
    free_port,
)
from streamer.tools.processes import ChildProcess, streamer_command
from tests.deploy.support import DEPLOY, PROMETHEUS_DIR, tool

T = TypeVar("T")

# Bounds on waiting for a process to come up or for data to appear; generous for a loaded CI
# machine, never asserted as timings.
STARTUP_S = 30.0
POLL_S = 0.1


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = STARTUP_S) -> T:
    """Call ``probe`` until it returns something other than None (or fail after the bound)."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except (OSError, ValueError, KeyError) as exc:
            last_error = exc
            result = None
        if result is not None:
            return result
        time.sleep(POLL_S)
    raise AssertionError(f"gave up waiting for {what} after {timeout_s:.0f} s: {last_error}")


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """(status, body), also for 4xx/5xx answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


class DeployMosquitto(LocalMosquitto):
    """mosquitto running deploy/mosquitto/mosquitto.conf: its password files, ACL, persistence
    and autosave, with its two listeners moved to free loopback ports: ``port`` is the one for
    everyone but the service (1883 in the container), ``service_port`` the service's (1884).
    The database goes to ``workdir`` instead of the /mosquitto/data volume."""

    name = "mosquitto-deploy"
    SHARED_LISTENER = 1883
    SERVICE_LISTENER = 1884

    def __init__(self, port: int | None = None, workdir: str | Path | None = None) -> None:
        super().__init__(port, workdir)
        self.service_port = 0
        self._service_port_used = False

    def port_for(self, container_port: int) -> int:
        """Where the listener the container would open on ``container_port`` listens here."""
        ports = {self.SHARED_LISTENER: self.port, self.SERVICE_LISTENER: self.service_port}
        assert container_port in ports, f"deploy/mosquitto has no listener {container_port}"
        return ports[container_port]

    def _spawn(self) -> None:
        try:
            super()._spawn()
        except LocalServiceError:
            if not self._service_port_used:
                self.service_port = 0  # maybe taken meanwhile: the retry picks another
            raise
        self._service_port_used = True  # kept from now on: clients reconnect to it

    def _command(self) -> list[str]:
        if not self.service_port:
            self.service_port = free_port(self.host)
        source = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8")
        lines = []
        for line in source.splitlines():
            listener = re.match(r"^\s*listener\s+(\d+)", line)
            if listener:
                line = f"listener {self.port_for(int(listener.group(1)))} {self.host}"
            elif re.match(r"^\s*log_dest\s", line):
                line = "log_dest stderr"
            line = line.replace("/mosquitto/config/", f"{DEPLOY / 'mosquitto'}/")
            lines.append(line.replace("/mosquitto/data/", f"{self.workdir}/"))
        if os.geteuid() == 0:
            # As root mosquitto drops to its own user, which may not read the checkout.
            lines.append("user root")
        config = self.workdir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return [find_executable("mosquitto"), "-c", str(config)]

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


class DeployRedis(LocalRedis):
    """redis-server with deploy/redis/users.acl (the default user off, `streamer` on) and the
    append-only file on, as docker-compose.yml runs it."""

    name = "redis-deploy"

    def __init__(self, port: int | None = None, workdir: str | Path | None = None) -> None:
        super().__init__(port, workdir, appendonly=True)

    def _command(self) -> list[str]:
        command = super()._command()
        config = Path(command[-1])
        acl = DEPLOY / "redis" / "users.acl"
        with config.open("a", encoding="utf-8") as f:
            f.write(f"aclfile {acl}\n")
        return command


class RunningService(ChildProcess):
    """``streamer run`` (or another subcommand) as a child process, logging to a file."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        super().__init__(args[0], streamer_command(*args), {**os.environ, **env}, log_path)
        self.start()

    def assert_running(self) -> None:
        assert self.alive(), f"process exited early:\n{self.log_tail()}"


@contextlib.contextmanager
def streamer_process(
    args: list[str], env: Mapping[str, str], workdir: Path
) -> Iterator[RunningService]:
    name = next(arg for arg in args if arg in COMMANDS)
    service = RunningService(args, env, workdir / f"streamer-{name}.log")
    try:
        yield service
    finally:
        service.stop()


def wait_until_ready(metrics_url: str, service: RunningService) -> None:
    def ready() -> bool | None:
        service.assert_running()
        status, _ = http_get(f"{metrics_url}/readyz")
        return True if status == 200 else None

    try:
        wait_for("/readyz to answer 200", ready)
    except AssertionError as exc:
        _, body = http_get(f"{metrics_url}/readyz")
        raise AssertionError(f"{exc}; /readyz says {body!r}; log:\n{service.log_tail()}") from None


class PrometheusServer:
    """A real Prometheus on a free port, with a temporary storage directory, scraping the given
    targets every second with deploy/prometheus/prometheus.yml's jobs and rule files."""

    def __init__(self, streamer_targets: list[str], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        config: dict[str, Any] = yaml.safe_load(
            (PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8")
        )
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
        jobs = [job for job in config["scrape_configs"] if job["job_name"] == "streamer"]
        assert len(jobs) == 1, "deploy/prometheus/prometheus.yml must have one `streamer` job"
        jobs[0]["static_configs"] = [{"targets": streamer_targets}]
        config["scrape_configs"] = jobs
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.storage = Path(tempfile.mkdtemp(prefix="prometheus-", dir=workdir))
        self.process = ChildProcess(
            "prometheus",
            [
                tool("prometheus"),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.storage}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            os.environ,
            workdir / "prometheus.log",
        ).start()

    def wait_ready(self) -> None:
        def ready() -> bool | None:
            assert self.process.alive(), f"prometheus exited:\n{self.process.log_tail()}"
            status, _ = http_get(f"{self.url}/-/ready")
            return True if status == 200 else None

        wait_for("Prometheus to be ready", ready)

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.url}/api/v1/{path}?{query}", timeout_s=5.0)
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", f"{path} {params}: {answer}"
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def stop(self) -> None:
        self.process.stop(timeout_s=15.0)
        shutil.rmtree(self.storage, ignore_errors=True)


@contextlib.contextmanager
def prometheus_server(streamer_targets: list[str], workdir: Path) -> Iterator[PrometheusServer]:
    server = PrometheusServer(streamer_targets, workdir)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
