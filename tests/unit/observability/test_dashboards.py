"""The Grafana dashboards the chart ships: built by dashboards/build.py, up to date, and made
of PromQL that parses (promtool), on the dashboards' own Prometheus data source."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from monitoring import (
    DASHBOARDS,
    ROOT,
    alert_rules,
    dashboard_expressions,
    substitute,
    tool,
    underlying,
)

BUILD = ROOT / "dashboards" / "build.py"


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboards_build", BUILD)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_dashboards_are_what_the_generator_builds() -> None:
    out = subprocess.run(
        [sys.executable, str(BUILD), "--check"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"stale dashboards: {out.stdout}{out.stderr}"


def test_the_check_fails_on_an_edited_or_extra_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    build = load_build()
    copy = tmp_path / "dashboards"
    shutil.copytree(DASHBOARDS, copy)
    monkeypatch.setattr(build, "OUT", copy)
    monkeypatch.setattr(build, "ROOT", tmp_path)
    assert build.main(["--check"]) == 0
    edited = copy / "gaudi-training-job.json"
    edited.write_text(edited.read_text().replace("Loss per rank", "Loss"))
    (copy / "old.json").write_text("{}")
    assert build.main(["--check"]) == 1
    assert "stale: dashboards/gaudi-training-job.json" in capsys.readouterr().out
    assert build.main([]) == 0  # rewrites the edited file, removes the extra one
    assert build.main(["--check"]) == 0
    assert not (copy / "old.json").exists()


def test_there_are_two_dashboards_and_the_job_one_picks_namespace_and_job() -> None:
    boards = {p.name: json.loads(p.read_text()) for p in DASHBOARDS.glob("*.json")}
    assert set(boards) == {"gaudi-operator-health.json", "gaudi-training-job.json"}
    job = boards["gaudi-training-job.json"]
    names = [v["name"] for v in job["templating"]["list"]]
    assert names == ["datasource", "namespace", "job"]
    annotations = {a["name"] for a in job["annotations"]["list"]}
    assert annotations == {"Restarts", "Resizes"}
    titles = {p["title"] for p in job["panels"]}
    assert {"World size", "Step", "Loss per rank", "Samples/s per rank"} <= titles
    assert "HPU utilisation per worker" in titles


def test_every_panel_queries_the_datasource_variable() -> None:
    for path in DASHBOARDS.glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (
                    f"{path.name}: {panel['title']}"
                )


def test_every_dashboard_and_rule_expression_parses(tmp_path: Path) -> None:
    """promtool parses each expression as a recording rule, with the dashboards' variables
    filled in, and also each series the no-dead-panel test takes out of an alert."""
    exprs = [substitute(e.promql, "team-a", "llama") for e in dashboard_expressions()]
    exprs += [part for rule in alert_rules() for part in underlying(rule["expr"])]
    rules = [{"record": f"check:expression_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "expressions.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "expressions", "rules": rules}]}))
    out = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(exprs) > 30  # every panel, annotation and variable was found
