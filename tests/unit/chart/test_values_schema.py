"""values.schema.json: every value typed, and a wrong or misspelled value refused by Helm
with its path named, before anything reaches a cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from unit.chart.chart_tools import CHART, VALUES_SETS, helm

SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())


def value_paths(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths down to the values the schema types one by one (maps it closes)."""
    for key, v in values.items():
        yield prefix + key
        sub = SCHEMA_AT.get(prefix + key, {})
        if isinstance(v, dict) and sub.get("additionalProperties") is False:
            yield from value_paths(v, prefix + key + ".")


def schema_paths(schema: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for key, sub in schema.get("properties", {}).items():
        found[prefix + key] = sub
        found.update(schema_paths(sub, prefix + key + "."))
    return found


SCHEMA_AT = schema_paths(SCHEMA)


def test_every_value_has_a_schema_and_every_schema_entry_a_default() -> None:
    in_values = set(value_paths(VALUES))
    in_schema = set(SCHEMA_AT) - {"global"}  # Helm's own key for subcharts
    assert in_values == in_schema, (
        f"only in values.yaml: {sorted(in_values - in_schema)}; "
        f"only in the schema: {sorted(in_schema - in_values)}"
    )


def test_every_schema_entry_is_typed_and_described() -> None:
    for path, sub in SCHEMA_AT.items():
        assert "type" in sub and sub.get("description"), path


def test_misspelled_keys_are_refused_at_every_level() -> None:
    closed = [p for p, s in SCHEMA_AT.items() if s.get("type") == "object" and "properties" in s]
    assert SCHEMA["additionalProperties"] is False
    for path in closed:
        assert SCHEMA_AT[path]["additionalProperties"] is False, path


def test_chart_lints_strict_with_the_defaults_and_every_values_set() -> None:
    helm("lint", "--strict", str(CHART))
    for values in VALUES_SETS:
        helm("lint", "--strict", str(CHART), "-f", str(values))


def test_several_replicas_without_leader_election_fail_rendering() -> None:
    out = helm(
        "template",
        "gaudi",
        str(CHART),
        "--set",
        "replicaCount=2",
        "--set",
        "leaderElection.enabled=false",
        check=False,
    )
    assert out.returncode != 0
    assert "replicaCount > 1 needs leaderElection.enabled" in out.stderr


def render_election(*settings: str) -> Any:
    # --set-json: `--set` turns 1.5 into a string.
    args = [a for s in settings for a in ("--set-json", f"leaderElection.{s}")]
    if "enabled=false" in settings:
        args += ["--set", "replicaCount=1"]
    return helm("template", "gaudi", str(CHART), *args, check=False)


@pytest.mark.parametrize(
    "timings",
    [
        ("leaseDuration=10", "renewDeadline=7", "retryPeriod=2"),  # the old defaults
        ("leaseDuration=6", "renewDeadline=4", "retryPeriod=1"),
        ("leaseDuration=15", "renewDeadline=11", "retryPeriod=2"),
        ("leaseDuration=6", "renewDeadline=3.5", "retryPeriod=1.5"),
    ],
)
def test_leader_timings_where_two_leaders_could_act_fail_rendering(
    timings: tuple[str, ...],
) -> None:
    # The schema cannot relate two values; the Deployment's template checks the sum.
    out = render_election(*timings)
    assert out.returncode != 0, f"{timings} were accepted"
    assert "renewDeadline" in out.stderr and "must be below leaseDuration" in out.stderr


@pytest.mark.parametrize(
    "timings",
    [
        (),  # the defaults: 10 + 2 x 2 < 15
        ("leaseDuration=6", "renewDeadline=3", "retryPeriod=1"),
        ("leaseDuration=10", "renewDeadline=6", "retryPeriod=1.5"),
        ("enabled=false", "leaseDuration=10", "renewDeadline=7", "retryPeriod=2"),
    ],
)
def test_safe_leader_timings_render(timings: tuple[str, ...]) -> None:
    out = render_election(*timings)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("replicaCount=abc", "'/replicaCount': got string, want integer"),
        ("replicaCount=-1", "'/replicaCount': minimum: got -1, want 0"),
        ("leaderElection.retryPeriod=0", "'/leaderElection/retryPeriod': minimum: got 0, want 1"),
        ("replicaCont=1", "additional properties 'replicaCont' not allowed"),
        ("serviceMonitor.enabeld=true", "'/serviceMonitor': additional properties 'enabeld'"),
        ("logFormat=xml", "'/logFormat': value must be one of 'json', 'plain'"),
        ("image.pullPolicy=Sometimes", "'/image/pullPolicy': value must be one of"),
        ("metricsPort=70000", "'/metricsPort': maximum: got 70,000, want 65,535"),
        ("watchNamespaces={team-*}", "'/watchNamespaces/0': 'team-*' does not match pattern"),
        ("serviceMonitor.interval=30", "'/serviceMonitor/interval': got number, want string"),
        ("prometheusURL=prometheus:9090", "'/prometheusURL': 'prometheus:9090' does not match"),
        ("grafanaDashboards.enabled=yes", "'/grafanaDashboards/enabled': got string, want boolean"),
        ("prometheusRule.labels.team=1", "'/prometheusRule/labels/team': got number, want string"),
    ],
)
def test_a_bad_value_fails_rendering_and_names_its_path(setting: str, named: str) -> None:
    out = helm("template", "gaudi", str(CHART), "--set", setting, check=False)
    assert out.returncode != 0, f"--set {setting} was accepted"
    assert named in out.stderr, out.stderr
