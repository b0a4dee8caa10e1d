"""deploy/k8s: the manifests parse, agree with each other (ports, labels, names, files), load
as each shard's pods would see them, and name only metrics the service exports; the shards of
shards.toml partition the indices, and each is a StatefulSet of two pods with stable MQTT
client ids, a rolling update and a PodDisruptionBudget."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from streamer.config import load_index, load_settings
from streamer.tools.tick_encoding import topic_for
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
Manifests = dict[tuple[str, str], Manifest]

SHARDS: list[dict[str, Any]] = tomllib.loads((K8S_DIR / "shards.toml").read_text())["shard"]
SHARD_NAMES = [shard["name"] for shard in SHARDS]
INDEX_FILES = sorted(p.name for p in (REPO / "config" / "indices").glob("*.toml"))
CALCULATOR = {"app.kubernetes.io/name": "streamer", "app.kubernetes.io/component": "calculator"}


@pytest.fixture(scope="module")
def manifests() -> Manifests:
    """(kind, name) -> manifest, from every file kustomization.yaml lists."""
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    found: Manifests = {}
    for resource in kustomization["resources"]:
        text = (K8S_DIR / resource).read_text(encoding="utf-8")
        for document in yaml.safe_load_all(text):
            assert document["apiVersion"] and document["kind"], resource
            key = (document["kind"], document["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = document
    return found


def get(manifests: Manifests, kind: str, name: str) -> Manifest:
    assert (kind, name) in manifests, f"no {kind} {name}"
    return manifests[(kind, name)]


def workloads(manifests: Manifests) -> list[Manifest]:
    """Every StatefulSet: one per shard, the only workloads."""
    found = [m for (kind, _), m in manifests.items() if kind == "StatefulSet"]
    assert len(found) == len(SHARDS)
    return found


def workload(manifests: Manifests, shard: str) -> Manifest:
    return get(manifests, "StatefulSet", f"streamer-{shard}")


def container(item: Manifest) -> dict[str, Any]:
    containers = item["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    only: dict[str, Any] = containers[0]
    return only


def env_values(item: Manifest) -> dict[str, Any]:
    """A workload's container env: name -> value (or its valueFrom)."""
    return {v["name"]: v.get("value", v.get("valueFrom")) for v in container(item)["env"]}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_generate", K8S_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metrics_port(manifests: Manifests) -> int:
    config = get(manifests, "ConfigMap", "streamer-config")["data"]["streamer.toml"]
    listen: str = tomllib.loads(config)["metrics"]["listen"]
    return int(listen.rpartition(":")[2])


def test_kustomization_lists_every_manifest() -> None:
    listed = set(load_yaml(K8S_DIR / "kustomization.yaml")["resources"])
    on_disk = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    # The template is read by the generator only.
    assert (K8S_DIR / "templates" / "statefulset.yaml").is_file()


def test_generated_manifests_are_current() -> None:
    generator = load_generator()
    outputs = generator.outputs()
    assert K8S_DIR / "shards.yaml" in outputs
    for path, text in outputs.items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is out of date: run python deploy/k8s/generate.py"
        )


def test_indices_configmap_holds_every_index_file(manifests: Manifests) -> None:
    data = get(manifests, "ConfigMap", "streamer-indices")["data"]
    files = {p.name: p.read_text(encoding="utf-8") for p in (REPO / "config" / "indices").iterdir()}
    assert data == files


def test_prometheus_rule_is_alerts_yml(manifests: Manifests) -> None:
    rule = get(manifests, "PrometheusRule", "streamer")
    assert rule["spec"]["groups"] == load_yaml(ALERTS)["groups"]
    exported = exported_series_names() | PROMETHEUS_SYNTHETIC
    for group in rule["spec"]["groups"]:
        for entry in group["rules"]:
            unknown = promql_metric_names(entry["expr"]) - exported
            assert not unknown, f"{entry['alert']}: unknown metrics {sorted(unknown)}"


def test_ports_agree_from_config_to_scrape(manifests: Manifests) -> None:
    port = metrics_port(manifests)
    service = get(manifests, "Service", "streamer")
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert service_ports["metrics"]["port"] == port
    for item in workloads(manifests):
        named = {p["name"]: p["containerPort"] for p in container(item)["ports"]}
        assert named == {"metrics": port}
        assert service_ports["metrics"]["targetPort"] in named
        pod_annotations = item["spec"]["template"]["metadata"]["annotations"]
        for scrape in (pod_annotations, service["metadata"]["annotations"]):
            assert scrape["prometheus.io/scrape"] == "true"
            assert scrape["prometheus.io/port"] == str(port)
            assert scrape["prometheus.io/path"] == "/metrics"
    monitor = get(manifests, "ServiceMonitor", "streamer")
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"


def test_probes_use_health_and_readiness_endpoints(manifests: Manifests) -> None:
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for item in workloads(manifests):
        spec = container(item)
        port_names = {p["name"] for p in spec["ports"]}
        for probe, path in expected.items():
            http = spec[probe]["httpGet"]
            assert http["path"] == path, probe
            assert http["port"] in port_names, probe
        assert spec["resources"]["requests"]["cpu"] and spec["resources"]["requests"]["memory"]
        assert spec["resources"]["limits"]["memory"]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_selectors_match(manifests: Manifests) -> None:
    service = get(manifests, "Service", "streamer")
    headless = get(manifests, "Service", "streamer-pods")
    for item in workloads(manifests):
        pod_labels = item["spec"]["template"]["metadata"]["labels"]
        assert _selects(item["spec"]["selector"]["matchLabels"], pod_labels)
        # The one Service (and so the ServiceMonitor) covers every shard's pods.
        assert _selects(service["spec"]["selector"], pod_labels)
        assert _selects(headless["spec"]["selector"], pod_labels)
        assert item["spec"]["serviceName"] == "streamer-pods"
    assert headless["spec"]["clusterIP"] == "None"
    # Each shard's selector picks its own pods only: overlapping selectors would fight.
    for item in workloads(manifests):
        for other in workloads(manifests):
            if other is not item:
                other_pods = other["spec"]["template"]["metadata"]["labels"]
                assert not _selects(item["spec"]["selector"]["matchLabels"], other_pods)
    monitor = get(manifests, "ServiceMonitor", "streamer")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    services = [m for (kind, _), m in manifests.items() if kind == "Service"]
    selected = [m for m in services if _selects(wanted, m["metadata"]["labels"])]
    # Exactly the metrics Service: the headless one too would scrape every pod twice.
    assert selected == [service]
    assert "prometheus.io/scrape" not in headless["metadata"].get("annotations", {})
    # StreamerDown matches job="streamer": the job label comes from this Service label.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "streamer"


def test_the_only_deployment_is_the_gateway(manifests: Manifests) -> None:
    # The calculators are StatefulSets (stable client ids); the stateless gateway is not.
    assert [key for key in manifests if key[0] == "Deployment"] == [
        ("Deployment", "streamer-gateway")
    ]
    assert sorted(item["metadata"]["name"] for item in workloads(manifests)) == sorted(
        f"streamer-{name}" for name in SHARD_NAMES
    )


@pytest.mark.parametrize("shard", SHARD_NAMES)
def test_each_shard_is_two_pods_with_a_rolling_update_and_a_disruption_budget(
    manifests: Manifests, shard: str
) -> None:
    item = workload(manifests, shard)
    spec = item["spec"]
    assert spec["replicas"] == 2
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    assert "partition" not in spec["updateStrategy"].get("rollingUpdate", {})
    labels = {**CALCULATOR, "shard": shard}
    assert spec["selector"]["matchLabels"] == labels
    assert item["metadata"]["labels"] == labels
    budget = get(manifests, "PodDisruptionBudget", f"streamer-{shard}")
    assert budget["apiVersion"] == "policy/v1"
    assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": labels}}
    # The two pods preferably on two nodes (preferred: a one-node cluster still runs both).
    anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == labels
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


@pytest.mark.parametrize("shard", SHARD_NAMES)
def test_mqtt_client_ids_are_the_stable_pod_names(manifests: Manifests, shard: str) -> None:
    item = workload(manifests, shard)
    env = env_values(item)
    assert env["STREAMER_MQTT_CLIENT_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["STREAMER_SHARD_NAME"] == shard
    # A StatefulSet's pods are <name>-<ordinal>, kept across replacement, so a replaced pod
    # resumes its predecessor's broker session; the longest must be a valid hostname, and the
    # controller-revision-hash label (<name>-<10 characters>) a valid label value.
    assert len(f"{item['metadata']['name']}-{item['spec']['replicas'] - 1}") <= 63
    assert len(item["metadata"]["name"]) + 11 <= 63


def test_pod_runs_as_the_image_user(manifests: Manifests) -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    user_lines = [line for line in dockerfile.splitlines() if line.startswith("USER ")]
    for item in workloads(manifests):
        pod = item["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert user_lines[-1].split()[1].split(":")[0] == str(pod["securityContext"]["runAsUser"])
        assert pod["enableServiceLinks"] is False
        security = container(item)["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        secrets = [v["secret"] for v in pod["volumes"] if "secret" in v]
        assert [s["defaultMode"] for s in secrets] == [0o440]


def _pod_view(manifests: Manifests, item: Manifest, root: Path, ordinal: int = 0) -> Any:
    """The settings the service loads in pod ``<name>-<ordinal>`` of ``item``, with its
    volumes written under ``root``."""
    pod = item["spec"]["template"]["spec"]
    spec = container(item)
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in spec["volumeMounts"]:
        volume = volumes[mount["name"]]
        directory = root / mount["mountPath"].lstrip("/")
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
                str(root / value.lstrip("/")) if value.startswith("/") else value
            )
        else:
            assert variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            environment[variable["name"]] = f"{item['metadata']['name']}-{ordinal}"
    args = spec["args"]
    config = args[args.index("--config") + 1]
    return load_settings(root / config.lstrip("/"), environ=environment)


@pytest.mark.parametrize("shard", SHARD_NAMES)
def test_config_loads_as_the_pod_sees_it(manifests: Manifests, shard: str, tmp_path: Path) -> None:
    settings = _pod_view(manifests, workload(manifests, shard), tmp_path, ordinal=1)
    assert settings.mqtt.client_id == f"streamer-{shard}-1"
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
    assert settings.metrics.listen.startswith("0.0.0.0:")
    shard_files = {Path(d.source).name for d in settings.indices}
    assert shard_files == set(load_generator().load_shards()[SHARD_NAMES.index(shard)]["files"])
    assert settings.shard.name == shard  # from STREAMER_SHARD_NAME
    assert settings.shard.lease_ttl_s > 0 and settings.state.store == "redis"  # hot standby


def test_the_gateway_reads_redis_as_the_reader_and_serves_its_port(
    manifests: Manifests, tmp_path: Path
) -> None:
    item = get(manifests, "Deployment", "streamer-gateway")
    spec = container(item)
    assert spec["args"][spec["args"].index("--config") - 1] == "gateway"
    settings = _pod_view(manifests, item, tmp_path)
    # Read-only: the streamer-reader user of deploy/redis/users.acl, with its own password.
    assert urlsplit(settings.gateway.redis_url).username == "streamer-reader"
    assert settings.gateway.password == "REPLACE-ME"
    port = int(settings.gateway.listen.rsplit(":", 1)[1])
    assert settings.gateway.listen.startswith("0.0.0.0:")
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert ports == {"http": port}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert spec[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    pod = item["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["enableServiceLinks"] is False
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    # Only the reader's password is mounted: the gateway cannot write even if it tried.
    [secret] = [v["secret"] for v in pod["volumes"] if "secret" in v]
    assert [i["key"] for i in secret["items"]] == ["redis-reader-password"]
    assert item["spec"]["replicas"] >= 2
    assert item["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    service = get(manifests, "Service", "streamer-gateway")
    assert _selects(service["spec"]["selector"], item["spec"]["template"]["metadata"]["labels"])
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    budget = get(manifests, "PodDisruptionBudget", "streamer-gateway")
    assert budget["spec"]["selector"]["matchLabels"] == item["spec"]["selector"]["matchLabels"]
    users = (DEPLOY / "redis" / "users.acl").read_text(encoding="utf-8")
    assert "user streamer-reader " in users


def test_the_shards_partition_the_indices(manifests: Manifests, tmp_path: Path) -> None:
    loaded: dict[str, set[str]] = {}
    for number, shard in enumerate(SHARD_NAMES):
        settings = _pod_view(manifests, workload(manifests, shard), tmp_path / str(number))
        loaded[shard] = {Path(d.source).name for d in settings.indices}
        assert loaded[shard], f"shard {shard} loads no index"
    every = [file for files in loaded.values() for file in files]
    # Each index in exactly one shard: two writers of one index would interleave its levels.
    assert sorted(every) == INDEX_FILES


@pytest.mark.parametrize("shard", SHARD_NAMES)
def test_a_shard_receives_the_ticks_of_every_constituent_of_its_indices(
    manifests: Manifests, shard: str, tmp_path: Path
) -> None:
    settings = _pod_view(manifests, workload(manifests, shard), tmp_path)
    topics = set(settings.mqtt.topics)
    symbols = {c.symbol for d in settings.indices for c in d.constituents}
    assert {topic_for("ticks", s) for s in symbols} <= topics
    assert {"fx/#", "control/#", "reference/#"} <= topics
    # ... and only those: the broker routes each shard its own symbols, not the whole feed.
    assert "ticks/#" not in topics
    assert len(topics) == len(symbols) + 3


def test_the_shard_glob_from_the_readme_loads_a_subset(
    manifests: Manifests, tmp_path: Path
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


@pytest.fixture
def generator_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The generator reading a shards.toml written by the test: ``write(text)``."""
    generator = load_generator()
    path = tmp_path / "shards.toml"
    monkeypatch.setattr(generator, "SHARDS", path)

    def write(text: str) -> Any:
        path.write_text(text, encoding="utf-8")
        return generator

    yield write


@pytest.mark.parametrize(
    ("shards", "problem"),
    [
        ('[[shard]]\nname = "all"\nindices = ["us500*.toml"]\n', "in no shard: demo30.toml"),
        (
            '[[shard]]\nname = "a"\nindices = ["*.toml"]\n'
            '[[shard]]\nname = "b"\nindices = ["demo30.toml"]\n',
            "demo30.toml is in shards 'a' and 'b'",
        ),
        ('[[shard]]\nname = "a"\nindices = ["nothing*.toml"]\n', "no index definition matches"),
        ('[[shard]]\nname = "US"\nindices = ["*.toml"]\n', "shard name 'US'"),
        ('[[shard]]\nname = "a_b"\nindices = ["*.toml"]\n', "shard name 'a_b'"),
        (f'[[shard]]\nname = "{"x" * 44}"\nindices = ["*.toml"]\n', "shard name"),
        (
            '[[shard]]\nname = "a"\nindices = ["*.toml"]\n'
            '[[shard]]\nname = "a"\nindices = ["*.toml"]\n',
            "listed twice",
        ),
        ('[[shard]]\nname = "a"\nindices = ["../x/*.toml"]\n', "name files in config/indices"),
        ('[[shard]]\nname = "a"\nindices = []\n', "give `name` and `indices`"),
        ('[[shard]]\nname = "a"\nindexes = ["*.toml"]\n', "not indexes"),
        ('[[shard]]\nname = "a"\nindices = ["*.toml"]\nsymbols = ["A B"]\n', "symbol 'A B'"),
        (
            '[[shard]]\nname = "a"\nindices = ["*.toml"]\ntopics = ["ticks/+/#/x"]\n',
            "topic 'ticks/+/#/x'",
        ),
    ],
)
def test_the_generator_refuses_a_bad_sharding(
    generator_with: Any, shards: str, problem: str
) -> None:
    generator = generator_with(shards)
    with pytest.raises(generator.ShardError, match=re.escape(problem)):
        generator.load_shards()


def test_one_shard_for_everything_is_a_valid_sharding(generator_with: Any) -> None:
    generator = generator_with(
        '[[shard]]\nname = "all"\nindices = ["*.toml"]\ntopics = ["ticks/#", "fx/#"]\n'
    )
    (shard,) = generator.load_shards()
    assert shard["files"] == INDEX_FILES
    assert shard["topics"] == ["ticks/#", "fx/#"]
    documents = list(yaml.safe_load_all(generator.shard_manifests()))
    assert [d["kind"] for d in documents] == ["StatefulSet", "PodDisruptionBudget"]
    env = env_values(documents[0])
    assert env["STREAMER_INDICES"] == "../indices/*.toml"
    assert env["STREAMER_MQTT_TOPICS"] == "ticks/#,\nfx/#"


def test_extra_symbols_add_their_tick_topics(generator_with: Any) -> None:
    generator = generator_with(
        '[[shard]]\nname = "a"\nindices = ["*.toml"]\nsymbols = ["NEWCO", "AAPL"]\n'
    )
    (shard,) = generator.load_shards()
    assert "ticks/NEWCO" in shard["topics"]
    assert shard["topics"].count("ticks/AAPL") == 1
    generator = generator_with(
        '[[shard]]\nname = "a"\nindices = ["*.toml"]\nsymbols = ["X"]\ntopics = ["ticks/#"]\n'
    )
    with pytest.raises(generator.ShardError, match="not both"):
        generator.load_shards()


def test_constituent_topics_come_from_the_index_definitions() -> None:
    generator = load_generator()
    symbols = {
        c.symbol for c in load_index(REPO / "config" / "indices" / "global40.toml").constituents
    }
    topics = generator.load_shards()[SHARD_NAMES.index("global")]["topics"]
    assert topics == [*sorted(f"ticks/{s}" for s in symbols), "fx/#", "control/#", "reference/#"]
