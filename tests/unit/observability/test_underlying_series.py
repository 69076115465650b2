"""An alert's underlying series: the expression without the threshold it is compared to
(the no-dead-panel test queries these against the real Prometheus)."""

from __future__ import annotations

import pytest

from monitoring import alert_rules, underlying


@pytest.mark.parametrize(
    ("expr", "series"),
    [
        ('max by (a) (m{phase="Failed"}) > 0', ['max by (a) (m{phase="Failed"})']),
        (
            "sum(rate(x_total[5m])) / sum(rate(y_total[5m])) >= 0.5",
            ["sum(rate(x_total[5m])) / sum(rate(y_total[5m]))"],
        ),
        ("x > bool 2", ["x"]),
        ("2 < x", ["x"]),
        ("a >= on (node) b", ["a", "b"]),
        ("(x == 0)", ["x"]),
        ('absent(up{job="j"})', ['up{job="j"}']),
        ('up{job="j"} == 0 or absent(up{job="j"})', ['up{job="j"}', 'up{job="j"}']),
        (
            "max by (a, b) (changes(s[10m])) == 0 and on (a, b) max by (a, b) (p) > 0",
            ["max by (a, b) (changes(s[10m]))", "max by (a, b) (p)"],
        ),
        ("x unless ignoring (rank) group_left y", ["x", "y"]),
        # Words inside metric names, label values and strings are not operators.
        ('gaudi_operator_x{reason="a or b"} > 1', ['gaudi_operator_x{reason="a or b"}']),
        ("online_users > 0", ["online_users"]),
        ('m{l=~"a|b", k!="c"}', ['m{l=~"a|b", k!="c"}']),
        ("time() - max(t)", ["time() - max(t)"]),
    ],
)
def test_comparisons_with_numbers_are_dropped_and_operands_kept(
    expr: str, series: list[str]
) -> None:
    assert underlying(expr) == series


def test_every_alert_has_underlying_series_without_comparisons() -> None:
    for rule in alert_rules():
        parts = underlying(rule["expr"])
        assert parts, rule["alert"]
        for part in parts:
            for op in ("==", "!=", ">", "<", " and ", " or ", "absent("):
                assert op not in part, f"{rule['alert']}: {part!r} still has {op!r}"
