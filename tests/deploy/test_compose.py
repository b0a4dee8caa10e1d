"""deploy/docker-compose.yml, checked without a Docker engine.

`docker compose config` would validate the file where Docker exists; here the file is parsed
and every reference followed: build contexts, mounted files, secrets, and whether the
hostnames, ports and credentials in the configs it mounts agree with the services, the
password file, the ACLs and each other.  The service's own config is loaded the way the
container sees it: the mounts are laid out under a temporary root.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from streamer.config import Settings, load_settings
from streamer.localservices import MOSQUITTO_AUTOSAVE
from tests.deploy.support import (
    COMPOSE_FILE,
    DEPLOY,
    MosquittoConf,
    load_yaml,
    mosquitto_acl,
    mosquitto_conf,
    mosquitto_password_matches,
    mosquitto_users,
    redis_acl_users,
    topic_matches,
)

COMPOSE_DIR = COMPOSE_FILE.parent
CONTAINER_PATH = re.compile(r"^/")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return document


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services: dict[str, dict[str, Any]] = compose["services"]
    assert name in services, f"compose has no service {name!r}"
    return services[name]


def named_volumes(spec: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume of a service."""
    mounts: dict[str, str] = {}
    for volume in spec.get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith((".", "/")):
            mounts[target] = source
    return mounts


def bind_mounts(spec: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (named volumes left out)."""
    mounts: dict[str, Path] = {}
    for volume in spec.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE_DIR / source).resolve()
    return mounts


def secret_files(compose: dict[str, Any], spec: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host file of a service's secrets."""
    files: dict[str, Path] = {}
    for entry in spec.get("secrets", []):
        name = entry if isinstance(entry, str) else entry["source"]
        target = name if isinstance(entry, str) else entry.get("target", name)
        path = target if target.startswith("/") else f"/run/secrets/{target}"
        files[path] = (COMPOSE_DIR / compose["secrets"][name]["file"]).resolve()
    return files


def container_view(
    compose: dict[str, Any], name: str, root: Path
) -> tuple[dict[str, Path], dict[str, str]]:
    """Lay a service's mounts and secrets out under ``root``; returns the mapping and its
    environment with container paths rewritten to ``root``."""
    spec = service(compose, name)
    mapping = {**bind_mounts(spec), **secret_files(compose, spec)}
    for target, source in mapping.items():
        place = root / target.lstrip("/")
        place.parent.mkdir(parents=True, exist_ok=True)
        place.symlink_to(source, target_is_directory=source.is_dir())
    environment = {
        key: (str(root / value.lstrip("/")) if str(value).startswith("/") else str(value))
        for key, value in spec.get("environment", {}).items()
    }
    return mapping, environment


def command_option(command: list[str], option: str) -> str:
    index = command.index(option)
    return command[index + 1]


def settings_as_seen_by(compose: dict[str, Any], name: str, root: Path) -> Settings:
    spec = service(compose, name)
    _, environment = container_view(compose, name, root)
    config = command_option(spec["command"], "--config")
    return load_settings(root / config.lstrip("/"), environ=environment)


# [ip:]host:container, the host port as ${VARIABLE:-default} or a number
_PORT_ENTRY = re.compile(
    r"^(?:[\d.]+:)?(?P<host>\$\{(?P<var>\w+):-(?P<default>\d+)\}|\d+):(?P<port>\d+)$"
)


def container_port(spec: dict[str, Any], variable: str) -> int:
    """The container port published on host port ``${variable:-default}``."""
    for entry in spec.get("ports", []):
        match = _PORT_ENTRY.match(str(entry))
        assert match, f"cannot read ports entry {entry!r}"
        if match.group("var") == variable:
            return int(match.group("port"))
    raise AssertionError(f"no port published as ${{{variable}}} in {spec.get('ports')}")


def test_compose_parses_with_the_expected_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {
        "mosquitto", "redis", "streamer", "simulator", "prometheus", "grafana",
    }  # fmt: skip


def test_build_contexts_and_dockerfiles_exist(compose: dict[str, Any]) -> None:
    built = [name for name, spec in compose["services"].items() if "build" in spec]
    assert "streamer" in built
    for name in built:
        build = compose["services"][name]["build"]
        context = (COMPOSE_DIR / build["context"]).resolve()
        assert context.is_dir(), f"{name}: build context {context} missing"
        assert (context / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']}"
        assert (context / "requirements.lock").is_file(), f"{name}: context is not the repo root"


def test_every_mounted_file_and_secret_exists(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        for target, source in {**bind_mounts(spec), **secret_files(compose, spec)}.items():
            assert source.exists(), f"{name}: {target} is mounted from {source}, which is missing"
    declared = set(compose.get("volumes", {}))
    for name, spec in compose["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: named volume {source!r} is not declared"


def test_dependencies_name_existing_services(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        for dependency in spec.get("depends_on", []):
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"


def test_ports_bind_to_loopback_on_their_usual_numbers(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        for entry in spec.get("ports", []):
            assert str(entry).startswith("127.0.0.1:"), f"{name} publishes {entry} beyond loopback"
            match = _PORT_ENTRY.match(str(entry))
            assert match and match.group("default") == match.group("port"), entry


def test_service_config_loads_as_the_container_sees_it(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    settings = settings_as_seen_by(compose, "streamer", tmp_path)
    assert settings.indices, "no index definitions under the mounted indices directory"
    assert settings.mqtt.password, "the MQTT password secret did not reach the config"
    assert settings.redis.password, "the Redis password secret did not reach the config"


def test_service_reaches_the_broker_as_an_allowed_user(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    settings = settings_as_seen_by(compose, "streamer", tmp_path)
    url = urlsplit(settings.mqtt.url)
    mosquitto = service(compose, "mosquitto")
    assert url.hostname == "mosquitto"
    assert url.username is not None and settings.mqtt.password is not None
    mounts = bind_mounts(mosquitto)
    listener = _mosquitto_listener_of(mounts, url.username)
    assert (url.port or 1883) == listener, "the service must use the listener its user is on"
    assert container_port(mosquitto, "MQTT_SERVICE_PORT") == listener
    conf = mosquitto_conf(mounts["/mosquitto/config/mosquitto.conf"])
    passwd = conf.listener_value(listener, "password_file")
    assert passwd is not None
    assert mosquitto_password_matches(mounts[passwd], url.username, settings.mqtt.password), (
        f"the service's MQTT password does not match {passwd}"
    )
    acl_file = conf.listener_value(listener, "acl_file")
    assert acl_file is not None
    acl = mosquitto_acl(mounts[acl_file])
    for topic_filter in settings.mqtt.topics:
        sample = topic_filter.replace("#", "x").replace("+", "x")
        assert _allowed(acl, url.username, "read", sample), f"ACL denies {topic_filter}"


def test_simulator_publishes_as_the_feed_user(compose: dict[str, Any], tmp_path: Path) -> None:
    settings = settings_as_seen_by(compose, "simulator", tmp_path)
    url = urlsplit(settings.mqtt.url)
    assert url.hostname == "mosquitto"
    assert url.username == "feed"
    assert settings.mqtt.password is not None
    mosquitto = service(compose, "mosquitto")
    mounts = bind_mounts(mosquitto)
    listener = _mosquitto_listener_of(mounts, "feed")
    assert (url.port or 1883) == listener == container_port(mosquitto, "MQTT_PORT")
    assert mosquitto_password_matches(
        mounts["/mosquitto/config/passwd"], "feed", settings.mqtt.password
    ), "the simulator's MQTT password does not match deploy/mosquitto/passwd"
    command = service(compose, "simulator")["command"]
    assert command[0] == "simulate"
    assert command_option(command, "--format") in {"json", "msgpack"}
    assert float(command_option(command, "--rate")) > 0
    assert int(command_option(command, "--batch")) >= 1


def test_acl_lets_only_the_feed_publish_prices_and_only_the_operator_control() -> None:
    acl = mosquitto_acl(DEPLOY / "mosquitto" / "acl")
    users = set(acl)
    assert users == {"feed", "operator", "streamer"}
    for topic in ("ticks/AAPL", "ticks/batch", "fx/EURUSD"):
        assert {u for u in users if _allowed(acl, u, "write", topic)} == {"feed"}, topic
        assert _allowed(acl, "streamer", "read", topic)
    assert {u for u in users if _allowed(acl, u, "write", "control/actions")} == {"operator"}
    assert _allowed(acl, "streamer", "read", "control/actions")
    assert acl["operator"] == [("write", "control/#")], "operator: publish control/, nothing else"
    for user in ("feed", "operator"):
        for topic in ("control/actions", "ticks/AAPL"):
            assert not _allowed(acl, user, "read", topic), (user, topic)


def test_password_files_hold_only_hashes_of_the_secrets() -> None:
    expected = {"passwd": {"feed", "operator"}, "passwd-service": {"streamer"}}
    for name, users in expected.items():
        passwd = DEPLOY / "mosquitto" / name
        assert mosquitto_users(passwd) == users, name
        for user in users:
            secret = (DEPLOY / "compose" / "secrets" / f"mqtt_{user}_password").read_text()
            assert secret.strip() not in passwd.read_text(), f"plain-text password in {name}"
            assert mosquitto_password_matches(passwd, user, secret.strip()), (name, user)


def test_broker_listeners_keep_other_users_off_the_service_client_ids(
    compose: dict[str, Any],
) -> None:
    # deploy/mosquitto/mosquitto.conf explains why: the service's user alone on its listener,
    # where replicas choose their ids; on every other listener the client id is the username.
    mounts = bind_mounts(service(compose, "mosquitto"))
    conf = mosquitto_conf(mounts["/mosquitto/config/mosquitto.conf"])
    assert conf.value("per_listener_settings") == "true", "one password file per listener"
    assert set(conf.listeners) == {1883, 1884}
    service_listener = _mosquitto_listener_of(mounts, "streamer")
    for port in conf.listeners:
        assert conf.listener_value(port, "allow_anonymous") == "false", port
        passwd = conf.listener_value(port, "password_file")
        acl_file = conf.listener_value(port, "acl_file")
        assert passwd in mounts and acl_file in mounts, f"listener {port}: files not mounted"
        users = mosquitto_users(mounts[passwd])
        if port == service_listener:
            assert users == {"streamer"}, f"only the service may log in on {port}: {users}"
            assert conf.listener_value(port, "use_username_as_clientid") in (None, "false")
        else:
            assert "streamer" not in users, port
            assert conf.listener_value(port, "use_username_as_clientid") == "true", (
                f"on listener {port}, {sorted(users)} could present the service's client id"
            )


def test_broker_persists_sessions_on_a_named_volume(compose: dict[str, Any]) -> None:
    mosquitto = service(compose, "mosquitto")
    conf = mosquitto_conf(bind_mounts(mosquitto)["/mosquitto/config/mosquitto.conf"])
    assert conf.value("persistence") == "true"
    location = conf.value("persistence_location")
    assert location is not None and location.endswith("/")
    volumes = named_volumes(mosquitto)
    assert location.rstrip("/") in volumes, f"{location} is not on a named volume"
    assert volumes[location.rstrip("/")] in compose["volumes"]
    # LocalMosquitto(persistent=True) saves the way the shipped broker does.
    autosave = tuple(
        f"{option} {conf.value(option)}"
        for option in ("autosave_on_changes", "autosave_interval")
        if conf.value(option) is not None
    )
    assert autosave == MOSQUITTO_AUTOSAVE
    assert conf.value("max_queued_messages") is not None, "the offline queue bound is explicit"
    assert conf.value("persistent_client_expiration") is not None, "orphan sessions expire"


def test_redis_persists_with_an_append_only_file_on_a_named_volume(
    compose: dict[str, Any],
) -> None:
    redis = service(compose, "redis")
    command = redis["command"]
    assert command_option(command, "--appendonly") == "yes"
    assert command_option(command, "--appendfsync") == "everysec"
    directory = command_option(command, "--dir")
    volumes = named_volumes(redis)
    assert directory in volumes, f"Redis writes its AOF to {directory}, not a named volume"
    assert volumes[directory] in compose["volumes"]


def test_service_reaches_redis_as_its_acl_user(compose: dict[str, Any], tmp_path: Path) -> None:
    import hashlib

    settings = settings_as_seen_by(compose, "streamer", tmp_path)
    url = urlsplit(settings.redis.url)
    redis = service(compose, "redis")
    assert url.hostname == "redis"
    assert (url.port or 6379) == 6379 == container_port(redis, "REDIS_PORT")
    assert "--port" not in redis["command"]
    acl_path = Path(command_option(redis["command"], "--aclfile"))
    users = redis_acl_users(bind_mounts(redis)[str(acl_path)])
    assert users["default"][0] == "off", "the default (passwordless) user must be disabled"
    rules = users[url.username or "default"]
    assert "on" in rules
    assert settings.redis.password is not None
    digest = hashlib.sha256(settings.redis.password.encode()).hexdigest()
    assert f"#{digest}" in rules, "the service's Redis password does not match users.acl"
    assert f"~{settings.redis.prefix}:*" in rules, "users.acl does not grant the key prefix"
    assert f"&{settings.redis.prefix}:*" in rules, "users.acl does not grant the levels channel"


def test_gateway_reads_redis_as_the_read_only_user(compose: dict[str, Any], tmp_path: Path) -> None:
    import hashlib

    from streamer.gateway.server import redis_source

    settings = settings_as_seen_by(compose, "gateway", tmp_path)
    url, password = redis_source(settings)
    assert urlsplit(url).hostname == "redis" and urlsplit(url).username == "streamer-reader"
    assert password is not None
    redis = service(compose, "redis")
    acl_path = Path(command_option(redis["command"], "--aclfile"))
    rules = redis_acl_users(bind_mounts(redis)[str(acl_path)])["streamer-reader"]
    assert f"#{hashlib.sha256(password.encode()).hexdigest()}" in rules
    assert "-@all" in rules and "+@read" in rules and "+@write" not in rules
    gateway = service(compose, "gateway")
    assert container_port(gateway, "GATEWAY_PORT") == 8080
    assert settings.gateway.listen == "0.0.0.0:8080"


def test_healthchecks_use_mounted_secrets(compose: dict[str, Any]) -> None:
    for name in ("mosquitto", "redis"):
        spec = service(compose, name)
        check = " ".join(spec["healthcheck"]["test"])
        for path in re.findall(r"/run/secrets/\w+", check):
            assert path in secret_files(compose, spec), f"{name} healthcheck reads unmounted {path}"


def test_prometheus_scrapes_the_service_and_loads_the_mounted_alerts(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    settings = settings_as_seen_by(compose, "streamer", tmp_path)
    metrics_port = int(settings.metrics.listen.rpartition(":")[2])
    assert settings.metrics.listen.startswith("0.0.0.0:"), "metrics must listen beyond loopback"
    assert container_port(service(compose, "streamer"), "METRICS_PORT") == metrics_port
    prometheus = service(compose, "prometheus")
    mounts = bind_mounts(prometheus)
    config_path = command_option(
        [a for arg in prometheus["command"] for a in arg.split("=", 1)], "--config.file"
    )
    config = load_yaml(mounts[config_path])
    for rule_file in config["rule_files"]:
        in_container = str(Path(config_path).parent / rule_file)
        assert in_container in mounts, f"rule file {rule_file} is not mounted"
    targets = [
        target
        for job in config["scrape_configs"]
        if job["job_name"] == "streamer"
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    assert targets == [f"streamer:{metrics_port}"]


def test_grafana_provisions_the_datasource_and_dashboard(compose: dict[str, Any]) -> None:
    grafana = service(compose, "grafana")
    mounts = bind_mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    datasources = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    url = urlsplit(datasources[0]["url"])
    assert url.hostname == "prometheus"
    assert url.port == container_port(service(compose, "prometheus"), "PROMETHEUS_PORT")
    providers = load_yaml(provisioning / "dashboards" / "streamer.yml")["providers"]
    dashboard_dir = providers[0]["options"]["path"]
    assert dashboard_dir in mounts, "the dashboard provider reads a directory that is not mounted"
    assert list(mounts[dashboard_dir].glob("*.json")), "no dashboard JSON to provision"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboard_dir + "/")
    assert (mounts[dashboard_dir] / Path(home).name).is_file()
    dashboard = json.loads((mounts[dashboard_dir] / Path(home).name).read_text())
    datasource_variable = next(
        v for v in dashboard["templating"]["list"] if v["type"] == "datasource"
    )
    assert datasource_variable["current"]["value"] == datasources[0]["uid"]
    assert "GF_SECURITY_ADMIN_PASSWORD__FILE" in grafana["environment"]
    secret_path = grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    assert secret_path in secret_files(compose, grafana)


def _mosquitto_listener_of(mounts: dict[str, Path], user: str) -> int:
    """The one listener of the mounted mosquitto.conf whose password file has ``user``."""
    conf: MosquittoConf = mosquitto_conf(mounts["/mosquitto/config/mosquitto.conf"])
    found = []
    for port in conf.listeners:
        passwd = conf.listener_value(port, "password_file")
        assert passwd in mounts, f"listener {port}: password_file {passwd} is not mounted"
        assert conf.listener_value(port, "acl_file") in mounts, f"listener {port}: acl_file"
        assert conf.listener_value(port, "allow_anonymous") == "false", port
        if user in mosquitto_users(mounts[passwd]):
            found.append(port)
    assert len(found) == 1, f"{user} can log in on listeners {found}, expected exactly one"
    return found[0]


def _allowed(acl: dict[str, list[tuple[str, str]]], user: str, access: str, topic: str) -> bool:
    return any(
        topic_matches(pattern, topic) and (granted == access or granted == "readwrite")
        for granted, pattern in acl.get(user, [])
    )
