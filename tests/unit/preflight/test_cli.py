"""`gaudi3 preflight`'s command line: options checked before anything is read, the settings
the checks get, the table and JSON, and the exit code."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from gaudi_operator.cli import preflight_command
from gaudi_operator.cli.main import app
from gaudi_operator.preflight import checks, probe
from gaudi_operator.preflight.checks import CHECKS, Settings, Status

pytestmark = pytest.mark.unit


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replaces the probe: records its settings, answers every check with a pass except
    what `seen["rows"]` says."""
    seen: dict[str, Any] = {"rows": {}}

    async def fake_run(settings: Settings, kubeconfig: Any, *, request_timeout: float) -> list:
        seen["settings"], seen["timeout"] = settings, request_timeout
        return [
            seen["rows"].get(c) or checks.result(c, Status.PASS, f"{c} is fine") for c, _ in CHECKS
        ]

    monkeypatch.setattr(probe, "run", fake_run)
    monkeypatch.delenv("GAUDI3_PROMETHEUS_URL", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return seen


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["preflight", *args], env={"COLUMNS": "200"})


def test_defaults_are_the_operators_and_the_charts(ran: dict[str, Any]) -> None:
    out = invoke()
    assert out.exit_code == 0, out.output
    assert "ready: 10 pass" in out.output and " fix " not in out.output  # nothing to fix
    s: Settings = ran["settings"]
    assert (s.namespace, s.lease_namespace, s.lease_name) == (
        "default",
        "gaudi-system",
        "gaudi-operator",
    )
    assert s.hpus_per_worker == 8 and s.hugepages_mi_per_hpu == 3624
    assert s.scale_out_label is not None
    assert s.scale_out_label.text == "intel.feature.node.kubernetes.io/gaudi-scale-out=true"
    assert s.device_plugin_selector == "name=habanalabs-device-plugin-ds"
    assert not s.multi_node and s.queue == "" and s.prometheus_url == ""


def test_options_reach_the_checks(ran: dict[str, Any]) -> None:
    out = invoke(
        "-n", "team-a", "--multi-node", "--scale-out-label", "", "--queue", "gaudi",
        "--hpus-per-worker", "4", "--hugepages-mi-per-hpu", "0", "--user", "bob",
        "--group", "devs", "--skip", "kueue", "--prometheus-url", "http://p:9090",
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    s: Settings = ran["settings"]
    assert s.namespace == "team-a" and s.multi_node and s.scale_out_label is None
    assert (s.queue, s.hpus_per_worker, s.hugepages_mi_per_hpu) == ("gaudi", 4, 0)
    assert (s.user, s.groups, s.skip) == ("bob", ("devs",), frozenset({"kueue"}))
    assert s.prometheus_url == "http://p:9090"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--hpus-per-worker", "3"), "--hpus-per-worker"),
        (("--skip", "gpus"), "gpus: not a check"),
        (("--scale-out-label", "=x"), "--scale-out-label"),
        (("--kubeconfig", "/nonexistent/kubeconfig"), "no such file"),
    ],
)
def test_bad_options_exit_2_naming_them(
    ran: dict[str, Any], args: tuple[str, ...], named: str
) -> None:
    out = invoke(*args)
    assert out.exit_code == 2 and named in out.output, out.output
    assert "settings" not in ran  # nothing was read


def test_a_failed_check_exits_1_and_json_says_not_ready(ran: dict[str, Any]) -> None:
    ran["rows"]["access"] = checks.result("access", Status.FAIL, "may not create", "bind a Role")
    ran["rows"]["kueue"] = checks.result("kueue", Status.SKIP, "no queue named")
    out = invoke("-o", "json")
    assert out.exit_code == 1
    body = json.loads(out.output)
    assert body["ready"] is False and body["summary"] == "not ready: 8 pass, 1 fail, 1 skip"
    assert [c["check"] for c in body["checks"]] == [c for c, _ in CHECKS]
    access = next(c for c in body["checks"] if c["check"] == "access")
    assert access == {
        "check": "access",
        "title": "may create GaudiTrainingJobs",
        "status": "fail",
        "found": "may not create",
        "fix": "bind a Role",
    }


def test_the_table_has_a_row_per_check_and_the_verdict(ran: dict[str, Any]) -> None:
    ran["rows"]["prometheus"] = checks.result("prometheus", Status.WARN, "no URL", "pass one")
    out = invoke()
    assert out.exit_code == 0, out.output
    for _, title in CHECKS:
        assert title in out.output
    assert "ready: 9 pass, 1 warn" in out.output and " fix " in out.output


def test_a_pod_log_gets_a_wide_table(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [checks.result(c, Status.FAIL, "x" * 60, "y" * 60) for c, _ in CHECKS]
    preflight_command.render_table(rows)  # stdout is no terminal here, as in a pod
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) == preflight_command.LOG_WIDTH
