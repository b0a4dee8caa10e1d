"""deploy/k8s: the manifests parse, agree with each other (ports, labels, names, files), load
as the pod would see them, and name only metrics the service exports."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from streamer.config import load_settings
from tests.deploy.support import (
    ALERTS,
    DEPLOY,
    K8S_DIR,
    PROMETHEUS_SYNTHETIC,
    REPO,
    exported_series_names,
    load_yaml,
    mosquitto_conf,
    mosquitto_users,
    promql_metric_names,
)

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], Manifest]:
    """(kind, name) -> manifest, from every file kustomization.yaml lists."""
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    found: dict[tuple[str, str], Manifest] = {}
    for resource in kustomization["resources"]:
        text = (K8S_DIR / resource).read_text(encoding="utf-8")
        for document in yaml.safe_load_all(text):
            assert document["apiVersion"] and document["kind"], resource
            key = (document["kind"], document["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = document
    return found


def get(manifests: dict[tuple[str, str], Manifest], kind: str, name: str) -> Manifest:
    assert (kind, name) in manifests, f"no {kind} {name}"
    return manifests[(kind, name)]


def container(manifests: dict[tuple[str, str], Manifest]) -> dict[str, Any]:
    containers = get(manifests, "Deployment", "streamer")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    only: dict[str, Any] = containers[0]
    return only


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_generate", K8S_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metrics_port(manifests: dict[tuple[str, str], Manifest]) -> int:
    config = get(manifests, "ConfigMap", "streamer-config")["data"]["streamer.toml"]
    listen: str = tomllib.loads(config)["metrics"]["listen"]
    return int(listen.rpartition(":")[2])


def test_kustomization_lists_every_manifest() -> None:
    listed = set(load_yaml(K8S_DIR / "kustomization.yaml")["resources"])
    on_disk = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_generated_manifests_are_current() -> None:
    generator = load_generator()
    for path, text in generator.outputs().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is out of date: run python deploy/k8s/generate.py"
        )


def test_indices_configmap_holds_every_index_file(
    manifests: dict[tuple[str, str], Manifest],
) -> None:
    data = get(manifests, "ConfigMap", "streamer-indices")["data"]
    files = {p.name: p.read_text(encoding="utf-8") for p in (REPO / "config" / "indices").iterdir()}
    assert data == files


def test_prometheus_rule_is_alerts_yml(manifests: dict[tuple[str, str], Manifest]) -> None:
    rule = get(manifests, "PrometheusRule", "streamer")
    assert rule["spec"]["groups"] == load_yaml(ALERTS)["groups"]
    exported = exported_series_names() | PROMETHEUS_SYNTHETIC
    for group in rule["spec"]["groups"]:
        for entry in group["rules"]:
            unknown = promql_metric_names(entry["expr"]) - exported
            assert not unknown, f"{entry['alert']}: unknown metrics {sorted(unknown)}"


def test_ports_agree_from_config_to_scrape(manifests: dict[tuple[str, str], Manifest]) -> None:
    port = metrics_port(manifests)
    spec = container(manifests)
    named = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert named == {"metrics": port}
    service = get(manifests, "Service", "streamer")
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert service_ports["metrics"]["targetPort"] in named
    assert service_ports["metrics"]["port"] == port
    pod_annotations = get(manifests, "Deployment", "streamer")["spec"]["template"]["metadata"][
        "annotations"
    ]
    for scrape in (pod_annotations, service["metadata"]["annotations"]):
        assert scrape["prometheus.io/scrape"] == "true"
        assert scrape["prometheus.io/port"] == str(port)
        assert scrape["prometheus.io/path"] == "/metrics"
    monitor = get(manifests, "ServiceMonitor", "streamer")
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"


def test_probes_use_health_and_readiness_endpoints(
    manifests: dict[tuple[str, str], Manifest],
) -> None:
    spec = container(manifests)
    port_names = {p["name"] for p in spec["ports"]}
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        http = spec[probe]["httpGet"]
        assert http["path"] == path, probe
        assert http["port"] in port_names, probe
    assert spec["resources"]["requests"]["cpu"] and spec["resources"]["requests"]["memory"]
    assert spec["resources"]["limits"]["memory"]


def test_selectors_match(manifests: dict[tuple[str, str], Manifest]) -> None:
    deployment = get(manifests, "Deployment", "streamer")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for key, value in deployment["spec"]["selector"]["matchLabels"].items():
        assert pod_labels[key] == value
    service = get(manifests, "Service", "streamer")
    for key, value in service["spec"]["selector"].items():
        assert pod_labels[key] == value
    monitor = get(manifests, "ServiceMonitor", "streamer")
    service_labels = service["metadata"]["labels"]
    for key, value in monitor["spec"]["selector"]["matchLabels"].items():
        assert service_labels[key] == value
    # StreamerDown matches job="streamer": the job label comes from this Service label.
    assert service_labels[monitor["spec"]["jobLabel"]] == "streamer"


def test_pod_runs_as_the_image_user(manifests: dict[tuple[str, str], Manifest]) -> None:
    pod = get(manifests, "Deployment", "streamer")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    user_lines = [line for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert user_lines[-1].split()[1].split(":")[0] == str(pod["securityContext"]["runAsUser"])
    assert pod["enableServiceLinks"] is False
    security = container(manifests)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True


def test_config_loads_as_the_pod_sees_it(
    manifests: dict[tuple[str, str], Manifest], tmp_path: Path
) -> None:
    pod = get(manifests, "Deployment", "streamer")["spec"]["template"]["spec"]
    spec = container(manifests)
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in spec["volumeMounts"]:
        volume = volumes[mount["name"]]
        directory = tmp_path / mount["mountPath"].lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            data = get(manifests, "ConfigMap", volume["configMap"]["name"])["data"]
        elif "secret" in volume:
            data = get(manifests, "Secret", volume["secret"]["secretName"])["stringData"]
        else:
            continue
        for key, value in data.items():
            (directory / key).write_text(value, encoding="utf-8")
    environment: dict[str, str] = {}
    for variable in spec["env"]:
        if "value" in variable:
            value = variable["value"]
            environment[variable["name"]] = (
                str(tmp_path / value.lstrip("/")) if value.startswith("/") else value
            )
        else:
            assert variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            environment[variable["name"]] = "streamer-5d8f7c9b6-x2k4q"
    args = spec["args"]
    config = args[args.index("--config") + 1]
    settings = load_settings(tmp_path / config.lstrip("/"), environ=environment)
    assert settings.mqtt.client_id == "streamer-5d8f7c9b6-x2k4q"
    # The broker's listener for the service user alone, as deploy/mosquitto configures it.
    conf = mosquitto_conf(DEPLOY / "mosquitto" / "mosquitto.conf")
    service_listeners = [
        port
        for port, options in conf.listeners.items()
        if mosquitto_users(DEPLOY / "mosquitto" / Path(options["password_file"][-1]).name)
        == {"streamer"}
    ]
    assert [urlsplit(settings.mqtt.url).port] == service_listeners
    assert settings.mqtt.password and settings.redis.password
    index_files = list((REPO / "config" / "indices").glob("*.toml"))
    assert len(settings.indices) == len(index_files)
    assert settings.metrics.listen.startswith("0.0.0.0:")


def test_shard_glob_from_the_readme_loads_a_subset(
    manifests: dict[tuple[str, str], Manifest], tmp_path: Path
) -> None:
    config_dir = tmp_path / "etc" / "streamer" / "config"
    indices_dir = tmp_path / "etc" / "streamer" / "indices"
    config_dir.mkdir(parents=True)
    indices_dir.mkdir(parents=True)
    (config_dir / "streamer.toml").write_text(
        get(manifests, "ConfigMap", "streamer-config")["data"]["streamer.toml"]
    )
    for key, value in get(manifests, "ConfigMap", "streamer-indices")["data"].items():
        (indices_dir / key).write_text(value)
    everything = load_settings(config_dir / "streamer.toml", environ={})
    shard = load_settings(
        config_dir / "streamer.toml", environ={"STREAMER_INDICES": "../indices/us500*.toml"}
    )
    assert 0 < len(shard.indices) < len(everything.indices)
    assert all(d.id.upper().startswith("US500") for d in shard.indices)
