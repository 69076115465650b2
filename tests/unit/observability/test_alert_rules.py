"""The alert rules the chart ships: valid for promtool, and each alert proven by promtool's
rule unit tests to fire where it should and stay quiet where it should not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from monitoring import ALERTS, alert_rules, tool

CASES = Path(__file__).with_name("alerts-test.yaml")
# Labels that name what an alert is about: a training job, or the operator's scrape target.
JOB_LABELS = ("{{ $labels.gtj_namespace }}", "{{ $labels.gtj }}")
TARGET_LABELS = ("{{ $labels.namespace }}", "{{ $labels.job }}")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=60)


def test_promtool_check_rules_accepts_the_rule_file() -> None:
    out = promtool("check", "rules", str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in out.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    out = promtool("test", "rules", str(CASES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_firing_case_and_a_quiet_case() -> None:
    cases = yaml.safe_load(CASES.read_text())["tests"]
    fires, quiet = set(), set()
    for group in cases:
        for case in group.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - fires == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"


def test_every_alert_has_a_severity_and_says_what_it_is_about() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        summary, description = rule["annotations"]["summary"], rule["annotations"]["description"]
        about = JOB_LABELS if "gtj" in rule["expr"] else TARGET_LABELS
        for label in about:
            assert label in description, f"{rule['alert']}: description lacks {label}"
        assert about[0] in summary, f"{rule['alert']}: summary lacks {about[0]}"
