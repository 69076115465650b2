"""The chart ships the dashboards as Grafana sidecar ConfigMaps and the alerts as a
PrometheusRule, both off by default (rendered with `helm template`, no cluster)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from monitoring import ALERTS, DASHBOARDS, ROOT, tool

CHART = ROOT / "charts" / "gaudi-operator"


def render(*sets: str) -> list[dict[str, Any]]:
    args = [tool("helm"), "template", "rel", str(CHART), "--namespace", "team-x"]
    for s in sets:
        args += ["--set-json", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_nothing_for_grafana_or_prometheus_rules_by_default() -> None:
    docs = render()
    assert not kinds(docs, "PrometheusRule")
    assert not [d for d in kinds(docs, "ConfigMap") if "dashboard" in d["metadata"]["name"]]


def test_each_dashboard_is_a_configmap_the_grafana_sidecar_picks_up() -> None:
    docs = render(
        'grafanaDashboards={"enabled": true, "namespace": "monitoring",'
        ' "annotations": {"grafana_folder": "Gaudi"}}'
    )
    maps = {d["metadata"]["name"]: d for d in kinds(docs, "ConfigMap")}
    assert set(maps) == {
        "rel-gaudi-operator-dashboard-operator-health",
        "rel-gaudi-operator-dashboard-training-job",
    }
    shipped = {p.name: json.loads(p.read_text()) for p in DASHBOARDS.glob("*.json")}
    for cm in maps.values():
        meta = cm["metadata"]
        assert meta["namespace"] == "monitoring"
        assert meta["labels"]["grafana_dashboard"] == "1"
        assert meta["annotations"] == {"grafana_folder": "Gaudi"}
        ((name, text),) = cm["data"].items()
        assert json.loads(text) == shipped[name]


def test_the_prometheus_rule_carries_the_tested_rules_aimed_at_this_release(
    tmp_path: Path,
) -> None:
    docs = render('prometheusRule={"enabled": true, "labels": {"release": "kps"}}')
    (rule,) = kinds(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "team-x"
    assert rule["metadata"]["labels"]["release"] == "kps"
    groups = rule["spec"]["groups"]
    shipped = yaml.safe_load(ALERTS.read_text())["groups"]
    assert [r["alert"] for g in groups for r in g["rules"]] == [
        r["alert"] for g in shipped for r in g["rules"]
    ]
    down = next(r for g in groups for r in g["rules"] if r["alert"] == "GaudiOperatorDown")
    # The chart's Service and namespace, as its ServiceMonitor scrape labels the target.
    assert down["expr"].count('up{job="rel-gaudi-operator-metrics", namespace="team-x"}') == 2
    path = tmp_path / "rendered-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    out = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
