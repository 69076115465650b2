"""The PromQL the chart ships: every expression of the Grafana dashboards and the alert
rules, with the dashboards' template variables filled in, and an alert's underlying series
(the expression without its threshold comparison)."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
FILES = ROOT / "charts" / "gaudi-operator" / "files"
ALERTS = FILES / "alerts.yaml"
DASHBOARDS = FILES / "dashboards"
# The Gaudi exporter's series: no exporter and no HPU exist on a test machine.
HPU_METRIC_PREFIX = "habanalabs_"
BIN = Path(os.environ.get("GAUDI3_CACHE", Path.home() / ".cache" / "gaudi3")) / "bin"


def tool(name: str) -> str:
    """promtool, helm: linked into ~/.cache/gaudi3/bin by `make setup` (hack/toolchain.sh)."""
    found = str(BIN / name) if (BIN / name).exists() else shutil.which(name)
    if not found:
        raise AssertionError(f"{name} not found: run `make setup` (bash hack/toolchain.sh)")
    return found


@dataclass(frozen=True)
class Expression:
    where: str  # e.g. "gaudi-training-job.json panel 'Step' A", "alert GaudiTrainingJobFailed"
    promql: str

    @property
    def needs_hpus(self) -> bool:
        return HPU_METRIC_PREFIX in self.promql


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alert_expressions() -> list[Expression]:
    return [Expression(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]


LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def dashboard_expressions() -> list[Expression]:
    """Panel targets, annotation queries and query variables of every shipped dashboard;
    a variable's `label_values(selector, label)` becomes `group by (label) (selector)`."""
    out: list[Expression] = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board.get("panels", []):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    where = f"{path.name} panel {panel['title']!r} {target.get('refId', '')}"
                    out.append(Expression(where, target["expr"]))
        for ann in board.get("annotations", {}).get("list", []):
            if ann.get("expr"):
                out.append(Expression(f"{path.name} annotation {ann['name']!r}", ann["expr"]))
        for var in board.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                m = LABEL_VALUES.match(var["query"])
                assert m, f"{path.name} variable {var['name']}: not label_values(...)"
                promql = f"group by ({m['label']}) ({m['selector']})"
                out.append(Expression(f"{path.name} variable {var['name']!r}", promql))
    return out


def substitute(promql: str, namespace: str, job: str, rate: str = "5m", range_: str = "10m") -> str:
    """Fill in the dashboards' template variables as Grafana would."""
    for name, value in (
        ("$__rate_interval", rate),
        ("$__range", range_),
        ("$namespace", namespace),
        ("$job", job),
    ):
        promql = promql.replace(name, value)
    assert "$" not in promql, f"unknown template variable in {promql!r}"
    return promql


# --- an expression without its threshold ------------------------------------------------

_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
_SET_OPERATORS = ("or", "unless", "and")  # lowest precedence first
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]?(Inf|NaN)$")
_WORD = re.compile(r"[A-Za-z0-9_:]")
_MODIFIER = re.compile(r"^(on|ignoring|group_left|group_right)\b\s*(\([^)]*\))?\s*")
_ABSENT = re.compile(r"^absent(_over_time)?\s*\(")


def _top_level(expr: str) -> list[tuple[int, str]]:
    """(index, char) of the characters outside brackets, braces, parentheses and strings."""
    out: list[tuple[int, str]] = []
    depth, quote, i = 0, "", 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            out.append((i, c))
        i += 1
    return out


def _wrapped(expr: str) -> bool:
    """Whether the whole expression is one parenthesised group: `(a + b)`, not `(a) + (b)`."""
    return expr.startswith("(") and not _top_level(expr)


def _drop_modifiers(operand: str) -> str:
    """`on (x) group_left b` -> `b`: the vector matching that follows a binary operator."""
    operand = operand.strip()
    while m := _MODIFIER.match(operand):
        if not m.group(0):
            break
        operand = operand[m.end() :]
    return operand


def _split_word(expr: str, word: str) -> list[str]:
    top = _top_level(expr)
    cuts = [
        i
        for i, _ in top
        if expr.startswith(word, i)
        and (i == 0 or not _WORD.match(expr[i - 1]))
        and (i + len(word) >= len(expr) or not _WORD.match(expr[i + len(word)]))
    ]
    parts, start = [], 0
    for i in cuts:
        parts.append(expr[start:i])
        start = i + len(word)
    parts.append(expr[start:])
    return [_drop_modifiers(p) for p in parts]


def _comparison(expr: str) -> tuple[str, str] | None:
    top = dict(_top_level(expr))
    for i in sorted(top):
        for op in _COMPARISONS:
            if expr.startswith(op, i) and all(i + k in top for k in range(len(op))):
                left, right = expr[:i].strip(), expr[i + len(op) :].strip()
                right = _drop_modifiers(re.sub(r"^bool\b\s*", "", right))
                return left, right
    return None


def underlying(expr: str) -> list[str]:
    """The series an expression is made of, each without the threshold it is compared to:
    `a > 2` gives a, `absent(a)` gives a, `a == 0 and on (x) b > 0` gives a and b."""
    expr = " ".join(expr.split())
    while _wrapped(expr):
        expr = expr[1:-1].strip()
    for op in _SET_OPERATORS:
        parts = _split_word(expr, op)
        if len(parts) > 1:
            return [u for p in parts for u in underlying(p)]
    cmp = _comparison(expr)
    if cmp is not None:
        sides = [s for s in cmp if not _NUMBER.match(s)]
        return [u for s in sides for u in underlying(s)]
    if _ABSENT.match(expr) and expr.endswith(")"):
        return underlying(expr[expr.index("(") + 1 : -1])
    return [expr]
