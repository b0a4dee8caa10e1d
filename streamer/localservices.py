"""Private ``mosquitto`` and ``redis-server`` processes on free loopback ports.

Used by the test suite, ``streamer demo`` and ``streamer bench e2e``: each instance lives in
its own temporary directory (config, log, data), listens on 127.0.0.1 only, and can be killed
and restarted on the same port to exercise reconnect paths.  By default nothing is kept across
a restart; ``LocalMosquitto(persistent=True)`` and ``LocalRedis(appendonly=True)`` keep their
data in that directory the way the shipped configs (deploy/) keep it on a volume.

    with LocalMosquitto() as broker, LocalRedis() as redis:
        run_service(mqtt_url=broker.url, redis_url=redis.url)

:class:`LocalRedisCluster` is a private Redis Cluster of such servers (three masters, with or
without a replica each), for code that must work against both kinds of Redis.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import redis
from redis.crc import key_slot

from streamer.errors import StreamerError
from streamer.mqtt.codec import connect_packet

LOOPBACK = "127.0.0.1"
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
_PORT_ATTEMPTS = 5


class LocalServiceError(StreamerError):
    """A local service could not be found, started or reached."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def find_executable(name: str) -> str:
    """The path of a server binary; Debian puts mosquitto in /usr/sbin, often not on PATH."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    package = "mosquitto" if name.startswith("mosquitto") else "redis-server"
    raise LocalServiceError(f"{name} not found; install it with: apt-get install {package}")


def die_with_parent() -> None:
    # Runs in the child between fork and exec: if the test runner dies without cleaning up,
    # the kernel sends SIGTERM so no orphaned broker keeps a port.
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


class LocalService:
    """One server process on a loopback port; subclasses say how to configure and probe it."""

    name = "service"

    def __init__(self, port: int | None = None, workdir: str | Path | None = None) -> None:
        self._requested_port = port
        self.port = port or 0
        self.host = LOOPBACK
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"streamer-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- what subclasses provide ------------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        """True when the server answers on its port."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start the server and wait until it accepts connections.

        Without a fixed port a fresh free port is chosen, retrying if another process takes
        it between the probe and the server's bind.
        """
        if self.is_running():
            return self
        # A port already used (given, or from an earlier start) is kept: clients reconnect to it.
        fixed = bool(self._requested_port or self.port)
        last_error = ""
        for _ in range(1 if fixed else _PORT_ATTEMPTS):
            if not self.port:
                self.port = free_port(self.host)
            try:
                self._spawn()
                return self
            except LocalServiceError as exc:
                last_error = str(exc)
                if not fixed:
                    self.port = 0
        raise LocalServiceError(last_error)

    def _spawn(self) -> None:
        self._log = self.log_path.open("ab")
        on_main_thread = threading.current_thread() is threading.main_thread()
        self._process = subprocess.Popen(
            self._command(),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # PDEATHSIG follows the forking *thread*; only tie lifetimes from the main thread.
            preexec_fn=die_with_parent if on_main_thread else None,  # noqa: PLW1509
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self._probe():
                return
            time.sleep(0.01)
        self._terminate(graceful=False)
        tail = self._log_tail()
        raise LocalServiceError(f"{self.name} did not start on {self.host}:{self.port}: {tail}")

    def stop(self, graceful: bool = True) -> None:
        """Stop the server (SIGTERM, or SIGKILL when ``graceful`` is false); keeps the port."""
        self._terminate(graceful)

    def kill(self) -> None:
        """Kill the server abruptly, as a crash would."""
        self._terminate(graceful=False)

    def restart(self, graceful: bool = True) -> Self:
        """Stop and start again on the same port (clients see the server go away and return)."""
        self._terminate(graceful)
        self._requested_port = self.port
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its temporary directory."""
        self._terminate(graceful=True)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _terminate(self, graceful: bool) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            if graceful:
                process.terminate()
            else:
                process.kill()
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=_STOP_TIMEOUT_S)
        elif process is not None:
            process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self, limit: int = 600) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines())[-limit:] or "(empty log)"

    def _tcp_connect(self) -> socket.socket | None:
        try:
            return socket.create_connection((self.host, self.port), timeout=0.5)
        except OSError:
            return None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"{type(self).__name__}({self.host}:{self.port}, {state})"

    @property
    def ca_file(self) -> Path:
        """With TLS: the self-signed certificate clients must trust (e.g. SSL_CERT_FILE)."""
        return self.workdir / "cert.pem"

    def _make_certificate(self) -> None:
        if self.ca_file.exists():
            return
        openssl = shutil.which("openssl")
        if openssl is None:
            raise LocalServiceError(f"openssl not found; it is needed for a TLS {self.name}")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", str(self.workdir / "key.pem"), "-out", str(self.ca_file),
             "-subj", f"/CN={self.host}", "-addext", f"subjectAltName=IP:{self.host}"],
            check=True,
            capture_output=True,
        )  # fmt: skip

    def _tls_connect(self) -> socket.socket | None:
        """A TLS connection to the server that trusts its certificate, or None."""
        sock = self._tcp_connect()
        if sock is None:
            return None
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            return context.wrap_socket(sock, server_hostname=self.host)
        except (OSError, ssl.SSLError):
            sock.close()
            return None


# How deploy/mosquitto/mosquitto.conf saves its database (its comment explains the choice;
# tests/deploy checks the two agree): right after any change, e.g. a QoS 1 message queued for
# an offline session, so a broker killed after that save still delivers the message.
MOSQUITTO_AUTOSAVE = ("autosave_on_changes true", "autosave_interval 1")


class LocalMosquitto(LocalService):
    """A private mosquitto broker: anonymous, or one user with a password file.

    ``persistent=True`` keeps sessions, subscriptions and queued QoS 1 messages in
    ``workdir/mosquitto.db`` and saves it as the shipped config does (:data:`MOSQUITTO_AUTOSAVE`),
    so :meth:`restart` (and :meth:`kill` then :meth:`start`, once the save has happened)
    keeps them.
    """

    name = "mosquitto"

    def __init__(
        self,
        port: int | None = None,
        workdir: str | Path | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        persistent: bool = False,
        extra_config: tuple[str, ...] = (),
    ) -> None:
        super().__init__(port, workdir)
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.username = username
        self.password = password
        self.tls = tls
        self.persistent = persistent
        self.extra_config = extra_config

    @property
    def database_path(self) -> Path:
        """Where a persistent broker saves its sessions and queued messages."""
        return self.workdir / "mosquitto.db"

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls else "mqtt"

    @property
    def url(self) -> str:
        """``mqtt[s]://host:port``, without credentials."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def authenticated_url(self) -> str:
        """``mqtt[s]://user:password@host:port`` (the plain url when anonymous)."""
        if self.username is None:
            return self.url
        return f"{self.scheme}://{self.username}:{self.password}@{self.host}:{self.port}"

    def _command(self) -> list[str]:
        config = self.workdir / "mosquitto.conf"
        if self.persistent:
            persistence = [
                "persistence true",
                f"persistence_location {self.workdir}/",
                *MOSQUITTO_AUTOSAVE,
            ]
        else:
            persistence = ["persistence false"]
        lines = [
            f"listener {self.port} {self.host}",
            *persistence,
            # Ticks are small messages: Nagle's algorithm would hold them back for latency.
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            # A subscriber that falls behind must be visible as lag, not silent loss.
            "max_queued_messages 0",
        ]
        if self.tls:
            self._make_certificate()
            lines += [f"certfile {self.ca_file}", f"keyfile {self.workdir / 'key.pem'}"]
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to the `mosquitto` user, which cannot read our
            # private temp dir; a loopback-only test broker may as well keep the caller's user.
            lines.append("user root")
        if self.username is not None and self.password is not None:
            password_file = self.workdir / "passwords"
            password_file.unlink(missing_ok=True)
            subprocess.run(
                [
                    find_executable("mosquitto_passwd"),
                    "-b",
                    "-c",
                    str(password_file),
                    self.username,
                    self.password,
                ],
                check=True,
                capture_output=True,
            )
            password_file.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        lines += list(self.extra_config)
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return [find_executable("mosquitto"), "-c", str(config)]

    def _probe(self) -> bool:
        sock = self._tls_connect() if self.tls else self._tcp_connect()
        if sock is None:
            return False
        with sock:
            # Any CONNACK (0x20) to an MQTT 3.1.1 CONNECT proves the broker is serving.
            connect = connect_packet("", self.username, self.password)
            try:
                sock.sendall(connect)
                answer = sock.recv(4)
                with contextlib.suppress(OSError):
                    sock.sendall(b"\xe0\x00")  # DISCONNECT
            except OSError:
                return False
            return answer[:1] == b"\x20"


class LocalRedis(LocalService):
    """A private redis-server: optional ``requirepass``, optional TLS.

    Without persistence by default; ``appendonly=True`` turns the append-only file on (in
    ``workdir``, fsync'd every second, as the shipped compose Redis), so a restart, or
    :meth:`kill` then :meth:`start`, keeps every acknowledged write.
    """

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        workdir: str | Path | None = None,
        *,
        password: str | None = None,
        tls: bool = False,
        appendonly: bool = False,
    ) -> None:
        super().__init__(port, workdir)
        self.password = password
        self.tls = tls
        self.appendonly = appendonly

    @property
    def url(self) -> str:
        """``redis[s]://host:port/0``, without credentials."""
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/0"

    @property
    def authenticated_url(self) -> str:
        """``redis[s]://:password@host:port/0`` (the plain url without a password)."""
        if self.password is None:
            return self.url
        return self.url.replace("://", f"://:{self.password}@", 1)

    def _config_lines(self) -> list[str]:
        lines = [
            f"port {self.port}",
            f"bind {self.host}",
            'save ""',
            *(["appendonly yes", "appendfsync everysec"] if self.appendonly else ["appendonly no"]),
            f"dir {self.workdir}",
            "daemonize no",
            "protected-mode yes",
            "loglevel warning",
        ]
        if self.password is not None:
            lines.append(f"requirepass {self.password}")
        if self.tls:
            # TLS only: the plain port is closed, clients need no certificate of their own.
            self._make_certificate()
            lines[0] = "port 0"
            lines += [
                f"tls-port {self.port}",
                f"tls-cert-file {self.ca_file}",
                f"tls-key-file {self.workdir / 'key.pem'}",
                "tls-auth-clients no",
            ]
        return lines

    def _command(self) -> list[str]:
        # The password goes in a config file so that it never shows in `ps`.
        config = self.workdir / "redis.conf"
        config.write_text("\n".join(self._config_lines()) + "\n", encoding="utf-8")
        config.chmod(0o600)
        return [find_executable("redis-server"), str(config)]

    def _probe(self) -> bool:
        sock = self._tls_connect() if self.tls else self._tcp_connect()
        if sock is None:
            return False
        with sock:
            try:
                sock.sendall(b"PING\r\n")
                answer = sock.recv(64)
            except OSError:
                return False
            # -NOAUTH proves the server is up just as well as +PONG.
            return answer.startswith((b"+PONG", b"-NOAUTH"))


# -- Redis Cluster ------------------------------------------------------------------------------

CLUSTER_SLOTS = 16384
_CLUSTER_START_TIMEOUT_S = 30.0
# How long a node may be unreachable before the others mark it failed (and, with replicas, fail
# over): redis-server's default is 15 s; a test cluster should notice a killed node quickly.
_CLUSTER_NODE_TIMEOUT_MS = 1000


def _cluster_query(host: str, port: int, *args: str) -> Any:
    """One command to one node (not cluster-routed), replies decoded; raises RedisError."""
    client = redis.Redis(
        host=host, port=port, socket_timeout=1.0, socket_connect_timeout=1.0,
        decode_responses=True,
    )  # fmt: skip
    try:
        # redis-py leaves execute_command unannotated.
        return client.execute_command(*args)  # type: ignore[no-untyped-call]
    finally:
        client.close()


class LocalRedisClusterNode(LocalRedis):
    """One node of a :class:`LocalRedisCluster`: a :class:`LocalRedis` with ``cluster-enabled``.

    Its cluster bus listens on ``bus_port``, set explicitly with ``cluster-port`` (Redis >= 7.0)
    rather than left at ``port + 10000``: that default can be taken, or past 65535 for a port
    from the ephemeral range.  Both ports are chosen afresh while the node has never run (a
    taken one makes :meth:`start` retry with new ones) and kept after that, and so is
    ``nodes.conf`` (the node's id and its view of the cluster) in ``workdir``: a node killed and
    started again rejoins the cluster as itself.  Without ``appendonly`` its keys are lost.
    """

    name = "redis-node"

    def __init__(
        self,
        port: int | None = None,
        workdir: str | Path | None = None,
        *,
        bus_port: int | None = None,
        appendonly: bool = False,
        node_timeout_ms: int = _CLUSTER_NODE_TIMEOUT_MS,
    ) -> None:
        super().__init__(port, workdir, appendonly=appendonly)
        self.bus_port = bus_port or 0
        self._bus_fixed = bus_port is not None
        self.node_timeout_ms = node_timeout_ms

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def start(self) -> Self:
        super().start()
        self._bus_fixed = True  # it ran with this bus port: the other nodes know it by it now
        return self

    def _config_lines(self) -> list[str]:
        if not self._bus_fixed:
            self.bus_port = free_port(self.host)
            while self.bus_port == self.port:
                self.bus_port = free_port(self.host)
        return [
            *super()._config_lines(),
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-port {self.bus_port}",
            f"cluster-node-timeout {self.node_timeout_ms}",
            # A replica's first full sync would otherwise wait 5 s for more replicas to share it.
            "repl-diskless-sync-delay 0",
        ]

    def query(self, *args: str) -> Any:
        """Send one command to this node alone (no cluster routing); replies as str."""
        return _cluster_query(self.host, self.port, *args)

    def cluster_info(self) -> dict[str, str]:
        """``CLUSTER INFO`` as a dict (``cluster_state``, ``cluster_known_nodes``, ...)."""
        reply = self.query("CLUSTER", "INFO")
        if isinstance(reply, dict):
            return {str(k): str(v) for k, v in reply.items()}
        return dict(line.split(":", 1) for line in str(reply).splitlines() if ":" in line)

    def node_id(self) -> str:
        return str(self.query("CLUSTER", "MYID"))

    def role(self) -> str:
        """``master`` or ``slave``, as the node itself says now (failovers swap them)."""
        return str(self.query("ROLE")[0])


class LocalRedisCluster:
    """A private Redis Cluster: ``masters`` masters with ``replicas`` replicas each.

    Every node is a :class:`LocalRedisClusterNode` on its own free loopback ports, in its own
    directory under one temporary ``workdir``; ``redis-cli --cluster create`` joins them and
    :meth:`start` returns once ``CLUSTER INFO`` says ``cluster_state:ok`` on every node and
    each knows all the others.  If anything fails on the way, every node started is stopped.

        with LocalRedisCluster() as cluster:
            client = redis.cluster.RedisCluster.from_url(cluster.url)

    ``nodes`` are the handles (kill, start and restart one on its ports, then
    :meth:`wait_ok`); ``url`` is the seed node's ``redis://host:port``, ``startup_nodes``
    every node's ``(host, port)``.  ``startup_s`` is how long :meth:`start` took.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        *,
        workdir: str | Path | None = None,
        appendonly: bool = False,
        node_timeout_ms: int = _CLUSTER_NODE_TIMEOUT_MS,
    ) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        self.masters = masters
        self.replicas = replicas
        self.appendonly = appendonly
        self.node_timeout_ms = node_timeout_ms
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="streamer-redis-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nodes: list[LocalRedisClusterNode] = []
        self.startup_s: float | None = None

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def url(self) -> str:
        """The seed node's ``redis://host:port`` (a cluster client discovers the rest)."""
        if not self.nodes:
            raise LocalServiceError("the cluster is not started")
        seed = self.nodes[0]
        return f"redis://{seed.host}:{seed.port}"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [node.address for node in self.nodes]

    def start(self) -> Self:
        """Start every node, create the cluster and wait until it is ok everywhere."""
        if self.nodes:
            return self
        began = time.monotonic()
        try:
            for number in range(self.masters * (1 + self.replicas)):
                node = LocalRedisClusterNode(
                    workdir=self.workdir / f"node-{number}",
                    appendonly=self.appendonly,
                    node_timeout_ms=self.node_timeout_ms,
                )
                self.nodes.append(node)
                node.start()
            self._create()
            self.wait_ok(_CLUSTER_START_TIMEOUT_S)
        except BaseException:
            self._stop_nodes()
            raise
        self.startup_s = time.monotonic() - began
        return self

    def _create(self) -> None:
        command = [
            find_executable("redis-cli"), "--cluster", "create",
            *(f"{node.host}:{node.port}" for node in self.nodes),
            "--cluster-replicas", str(self.replicas), "--cluster-yes",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command, capture_output=True, timeout=_CLUSTER_START_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalServiceError("redis-cli --cluster create timed out") from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode("utf-8", errors="replace")
            tail = " | ".join(output.strip().splitlines())[-600:]
            raise LocalServiceError(f"redis-cli --cluster create failed: {tail}")

    def is_ok(self) -> bool:
        """True when every running node says ``cluster_state:ok``, knows every node (a killed
        one stays known, as failed) and maps every slot to a master that is running, and
        every running replica is in sync with its master.

        The slot map is what makes a kill visible at once: the others take a node timeout to
        notice that a master is gone, and report ``ok`` until then.  A replica counts once
        its initial sync is done: until then it could not take over from its master.
        """
        running = [node for node in self.nodes if node.is_running()]
        if not running:
            return False
        addresses = {node.address for node in running}
        for node in running:
            try:
                info = node.cluster_info()
                ranges = node.query("CLUSTER", "SLOTS")
                role = node.query("ROLE")  # a replica: [slave, host, port, state, offset]
            except redis.RedisError:
                return False
            if (
                (role[0] == "slave" and role[3] != "connected")
                or info.get("cluster_state") != "ok"
                or info.get("cluster_slots_ok") != str(CLUSTER_SLOTS)
                or info.get("cluster_known_nodes") != str(len(self.nodes))
                or not self._served_by(ranges, addresses)
            ):
                return False
        return True

    @staticmethod
    def _served_by(ranges: Any, addresses: set[tuple[str, int]]) -> bool:
        """True when the ``CLUSTER SLOTS`` reply covers every slot with masters in
        ``addresses``."""
        covered = 0
        for start, end, primary in LocalRedisCluster._slot_ranges(ranges):
            if primary not in addresses:
                return False
            covered += end - start + 1
        return covered == CLUSTER_SLOTS

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Wait until :meth:`is_ok`; LocalServiceError with every node's state if it is not.

        A master that has just (re)started reports ``ok`` only about 2 s after its start (Redis
        gives the cluster time to reconfigure it first), a failover takes about the node
        timeout plus an election.
        """
        deadline = time.monotonic() + timeout
        while not self.is_ok():
            if time.monotonic() > deadline:
                raise LocalServiceError(f"the Redis Cluster is not ok: {self._states()}")
            time.sleep(0.05)

    def _states(self) -> str:
        states = []
        for node in self.nodes:
            if not node.is_running():
                states.append(f"{node.port}: stopped")
                continue
            try:
                states.append(f"{node.port}: {node.cluster_info().get('cluster_state')}")
            except redis.RedisError as exc:
                states.append(f"{node.port}: {exc}")
        return ", ".join(states)

    def current_masters(self) -> list[LocalRedisClusterNode]:
        """The running nodes that are masters now."""
        return [n for n in self.nodes if n.is_running() and n.role() == "master"]

    def node_for_key(self, key: str | bytes) -> LocalRedisClusterNode:
        """The master serving ``key``'s slot, as a running node sees the slot map now."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for asked in (n for n in self.nodes if n.is_running()):
            try:
                ranges = asked.query("CLUSTER", "SLOTS")
            except redis.RedisError:
                continue
            for start, end, primary in self._slot_ranges(ranges):
                if start <= slot <= end:
                    for node in self.nodes:
                        if primary == node.address:
                            return node
        raise LocalServiceError(f"no node serves slot {slot}")

    @staticmethod
    def _slot_ranges(ranges: Any) -> list[tuple[int, int, tuple[str, int]]]:
        """A ``CLUSTER SLOTS`` reply as (first slot, last slot, master's (host, port))."""
        # A plain client returns it as RESP: [[start, end, [host, port, id, ...], ...], ...].
        return [
            (int(start), int(end), (str(primary[0]), int(primary[1])))
            for start, end, primary, *_ in ranges
        ]

    def _stop_nodes(self) -> None:
        # Their directories go too: a node started later in one with a nodes.conf left behind
        # would take itself for a member of a cluster that is gone.
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.close()
            shutil.rmtree(node.workdir, ignore_errors=True)
        self.nodes = []

    def close(self) -> None:
        """Stop every node and remove the temporary directory."""
        self._stop_nodes()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()  # no __exit__ follows a failed __enter__
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        ports = ",".join(str(node.port) for node in self.nodes) or "not started"
        return f"LocalRedisCluster(masters={self.masters}, replicas={self.replicas}, ports={ports})"
