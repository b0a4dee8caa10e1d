"""The Grafana dashboard and its provisioning: well-formed, and every query names a metric the
service exports and parses as PromQL."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    DASHBOARD,
    DEPLOY,
    PENDING_METRICS,
    PROMETHEUS_SYNTHETIC,
    exported_series_names,
    load_yaml,
    promql_metric_names,
    tool,
)

# Grafana's built-in and dashboard variables, as a plausible value for the PromQL parse.
VARIABLE_VALUES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$instance": ".*",
    "$index": ".*",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return document


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return found


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target."""
    return [
        (f"panel {panel['title']!r} target {target['refId']}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(variable, metric selector) of every ``label_values(selector, label)`` variable."""
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", text.strip())
        assert match, f"variable {variable['name']}: unsupported query {text!r}"
        found.append((variable["name"], match.group(1)))
    return found


def substitute(expr: str) -> str:
    for variable, value in VARIABLE_VALUES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown dashboard variable in {expr!r}"
    return expr


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{panel['title']}: empty query"


def test_every_query_names_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    exported = exported_series_names() | PROMETHEUS_SYNTHETIC | PENDING_METRICS
    for where, expr in [*queries(dashboard), *variable_queries(dashboard)]:
        names = promql_metric_names(substitute(expr))
        assert names, f"{where}: selects no metric: {expr}"
        unknown = names - exported
        assert not unknown, f"{where}: metrics the service does not export: {sorted(unknown)}"


def test_dashboard_shows_what_the_desk_asked_for(dashboard: dict[str, Any]) -> None:
    selected = {name for _, expr in queries(dashboard) for name in promql_metric_names(expr)}
    for metric in (
        "streamer_index_level",
        "streamer_ticks_total",
        "streamer_tick_to_publish_seconds_bucket",
        "streamer_stale_constituents",
        "streamer_reference_deviation_bps",
        "streamer_queue_depth",
    ):
        assert metric in selected, f"no panel shows {metric}"
    titles = " ".join(panel["title"].lower() for panel in panels(dashboard))
    for words in (
        "index levels",
        "tick rate",
        "latency",
        "rejects by reason",
        "stale",
        "reference deviation",
        "queue depth",
    ):
        assert words in titles, f"no panel titled with {words!r}"
    latency = [expr for _, expr in queries(dashboard) if "tick_to_publish_seconds_bucket" in expr]
    quantiles = {re.search(r"histogram_quantile\(([\d.]+)", e).group(1) for e in latency}  # type: ignore[union-attr]
    assert {"0.5", "0.99"} <= quantiles


def test_pending_metrics_are_still_pending(dashboard: dict[str, Any]) -> None:
    # support.PENDING_METRICS exempts names the service does not export yet; once it does, the
    # exemption would only hide a later rename.
    exported = PENDING_METRICS & exported_series_names()
    assert not exported, (
        f"now exported by streamer.metrics: delete {sorted(exported)} from PENDING_METRICS "
        "in tests/deploy/support.py"
    )
    selected = {name for _, expr in queries(dashboard) for name in promql_metric_names(expr)}
    assert selected >= PENDING_METRICS, f"no panel uses {sorted(PENDING_METRICS - selected)}"


def panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    found = [p for p in panels(dashboard) if p["title"] == title]
    assert len(found) == 1, f"{len(found)} panels titled {title!r}"
    return found[0]


def test_current_levels_table_has_one_row_per_series(dashboard: dict[str, Any]) -> None:
    table = panel(dashboard, "Current levels")
    assert table["type"] == "table"
    targets = {t["refId"]: t for t in table["targets"]}
    for target in targets.values():  # the values now, as table frames
        assert target.get("instant") is True and target.get("format") == "table", target
        # merge joins frames on their labels: every query must come down to (instance, index)
        assert target["expr"].count("max by (instance, index) (") >= 1, target["expr"]
        bare = re.sub(r"max by \(instance, index\) \(\w+\{[^}]*\}\)", "", target["expr"])
        assert not promql_metric_names(bare), f"a selector not reduced to (instance, index): {bare}"
    metrics = {ref: promql_metric_names(t["expr"]) for ref, t in targets.items()}
    transformations = [t["id"] for t in table["transformations"]]
    assert transformations[0] == "merge"
    organize = next(t["options"] for t in table["transformations"] if t["id"] == "organize")
    columns = {organize["renameByName"][f"Value #{ref}"]: names for ref, names in metrics.items()}
    assert columns == {
        "Level": {"streamer_index_level"},
        "Change %": {"streamer_index_level", "streamer_index_prev_close"},
        "Stale": {"streamer_stale_constituents"},
        "Coverage": {"streamer_stale_constituents", "streamer_constituents"},
        "Reference deviation": {"streamer_reference_deviation_bps"},
        "Since last close": {"streamer_last_close_timestamp_seconds"},
    }
    change = next(t["expr"] for t in table["targets"] if "prev_close" in t["expr"])
    assert change.startswith("100 * (") and change.endswith(" - 1)")
    units = {
        override["matcher"]["options"]: prop["value"]
        for override in table["fieldConfig"]["overrides"]
        for prop in override["properties"]
        if prop["id"] == "unit"
    }
    assert units["Change %"] == "percent" and units["Coverage"] == "percentunit"
    assert units["Reference deviation"] == "suffix: bps" and units["Since last close"] == "s"


def test_levels_share_an_axis_only_as_percent_changes(dashboard: dict[str, Any]) -> None:
    # 23 levels from 1,000 to 44,000 on one linear axis show nothing but two bands.
    change = panel(dashboard, "Levels: % change since the previous close")
    assert change["fieldConfig"]["defaults"]["unit"] == "percent"
    [expr] = [t["expr"] for t in change["targets"]]
    assert promql_metric_names(expr) == {"streamer_index_level", "streamer_index_prev_close"}
    assert "scaleDistribution" not in change["fieldConfig"]["defaults"]["custom"]  # linear
    for graph in panels(dashboard):
        if graph["type"] != "timeseries":
            continue
        for target in graph["targets"]:
            if promql_metric_names(target["expr"]) == {"streamer_index_level"}:
                scale = graph["fieldConfig"]["defaults"]["custom"].get("scaleDistribution", {})
                assert scale.get("type") == "log", f"{graph['title']}: raw levels, linear axis"
    deviation = panel(dashboard, "Reference deviation")
    assert deviation["fieldConfig"]["defaults"]["unit"] == "suffix: bps"


def test_service_state_panels_show_the_newer_metrics(dashboard: dict[str, Any]) -> None:
    by_title = {
        p["title"]: {n for t in p.get("targets", []) for n in promql_metric_names(t["expr"])}
        for p in panels(dashboard)
    }
    assert by_title["Ingest lag"] == {"streamer_ingest_lag_seconds"}
    assert by_title["Redis connection state"] == {"streamer_redis_state"}
    assert by_title["Checkpoint age"] == {"streamer_checkpoint_age_seconds"}
    assert by_title["Corporate actions by outcome and reason"] == {"streamer_actions_total"}
    assert by_title["Time since last close"] == {"streamer_last_close_timestamp_seconds"}
    actions = panel(dashboard, "Corporate actions by outcome and reason")["targets"][0]["expr"]
    assert "by (outcome, reason)" in actions
    since = panel(dashboard, "Time since last close")["targets"][0]["expr"]
    assert since.startswith("time() - streamer_last_close_timestamp_seconds")
    # The state timeline maps the one current state of each instance to its name.
    state = panel(dashboard, "Redis connection state")
    [mapping] = state["fieldConfig"]["defaults"]["mappings"]
    names = {value["text"] for value in mapping["options"].values()}
    assert names == {"connected", "unreachable", "refusing writes"}
    expr = state["targets"][0]["expr"]
    assert all(f'state="{s}"' in expr for s in ("connected", "unreachable", "refusing_writes"))


def test_every_query_parses_as_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    expressions = [substitute(expr) for _, expr in queries(dashboard)]
    expressions += [substitute(selector) for _, selector in variable_queries(dashboard)]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, expr in enumerate(expressions)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_points_at_the_dashboard() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasource = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["uid"]
    provider = load_yaml(provisioning / "dashboards" / "streamer.yml")["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"]
