"""The chart's `hpuHealth` values reach the operator as the environment it reads
(failover/wiring.py): the default query unless one is given, off when disabled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gaudi_operator.failover import signals
from unit.chart.chart_tools import CHART, helm


def operator_env(tmp_path: Path, hpu_health: dict[str, Any] | None = None) -> dict[str, str]:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"hpuHealth": hpu_health or {}}))
    docs = yaml.safe_load_all(helm("template", "gaudi", str(CHART), "-f", str(values)).stdout)
    [deployment] = [d for d in docs if d and d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"] if "value" in e}


def test_by_default_the_operator_uses_its_own_query_with_the_charts_timings(
    tmp_path: Path,
) -> None:
    env = operator_env(tmp_path)
    assert signals.HPU_HEALTH_QUERY_ENV not in env  # the operator's default query
    assert env[signals.HPU_HEALTH_INTERVAL_ENV] == "5"
    assert env[signals.HPU_HEALTH_POD_GRACE_ENV] == "40"


def test_a_query_of_ones_own_is_passed_as_is(tmp_path: Path) -> None:
    query = 'max by (pod_namespace, pod_name) (habanalabs_temperature_onchip{x="1"} > 95)'
    env = operator_env(tmp_path, {"query": query, "podGraceSeconds": 65})
    assert env[signals.HPU_HEALTH_QUERY_ENV] == query
    assert env[signals.HPU_HEALTH_POD_GRACE_ENV] == "65"


def test_disabled_sets_an_empty_query_which_turns_the_check_off(tmp_path: Path) -> None:
    env = operator_env(tmp_path, {"enabled": False, "query": "up"})
    assert env[signals.HPU_HEALTH_QUERY_ENV] == ""


def test_a_zero_interval_is_refused_with_its_path() -> None:
    out = helm("template", "gaudi", str(CHART), "--set", "hpuHealth.intervalSeconds=0", check=False)
    assert out.returncode != 0 and "/hpuHealth/intervalSeconds" in out.stderr
