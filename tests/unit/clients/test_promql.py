"""A job's PromQL limited to its namespace, as prom-label-proxy does it: every selector gets
the matcher, a query that picks the label itself is refused, and what goes out is exactly
the query that was meant (also to Prometheus' own parser, promtool)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import promql_parser as pp
import pytest
import yaml

from gaudi_operator.clients.promql import QueryNotScoped, quote, scope_query, scope_query_to_any
from monitoring import tool

pytestmark = pytest.mark.unit


def selectors(promql: str) -> list[list[tuple[str, str, str]]]:
    """Every vector selector's matchers, (name, op, value), as the parser reads the text."""
    out: list[list[tuple[str, str, str]]] = []

    def visit(node: pp.Expr) -> None:
        if isinstance(node, pp.VectorSelector):
            out.append([(m.name, str(m.op), m.value) for m in node.matchers.matchers])

    pp.walk(pp.parse(promql), visit)
    return out


def scoped_everywhere(promql: str, ns: str = "team-a") -> bool:
    found = selectors(promql)
    eq = str(pp.MatchOp.Equal)
    return bool(found) and all(
        [m for m in ms if m[0] == "namespace"] == [("namespace", eq, ns)] for ms in found
    )


@pytest.mark.parametrize(
    "query",
    [
        'sum(rate(foo{gtj="j"}[5m])) by (x)',
        "foo / on() group_left bar",
        "max_over_time(up[10m:1m]) + rate(x[1h30m] @ start()) + y offset 5m",
        '{__name__=~".+"}',
        'sum(foo{namespace="team-a"}) or absent(bar)',  # the identical matcher is kept once
        'count_values("v", x) + label_replace(y, "dst", "$1", "src", "(.*)")',
        "topk(3, sum by (pod) (x)) and on (pod) (y > 1)",
        "histogram_quantile(0.9, sum by (le) (rate(z_bucket[5m])))",
    ],
)
def test_every_selector_gets_the_namespace(query: str) -> None:
    out = scope_query(query, "namespace", "team-a")
    assert scoped_everywhere(out), out


def test_the_identical_matcher_is_not_doubled() -> None:
    assert (
        scope_query('sum(x{gtj="j",namespace="team-a"})', "namespace", "team-a")
        == 'sum(x{gtj="j",namespace="team-a"})'
    )


@pytest.mark.parametrize(
    "query",
    [
        'x{namespace="other"}',
        'x{namespace=~".*"}',
        'x{namespace=~"team-a|other"}',
        'x{namespace!="team-b"}',
        'sum(x{gtj="j"}) / sum(y{namespace!~"kube-.*"})',
        'rate(x{namespace="other"}[5m])',
    ],
)
def test_a_query_that_picks_the_namespace_itself_is_refused(query: str) -> None:
    with pytest.raises(QueryNotScoped) as err:
        scope_query(query, "namespace", "team-a")
    assert "spec.autoscaling.metric.query" in str(err.value)
    assert "may not choose the 'namespace' label" in str(err.value)


def test_quotes_in_a_value_cannot_close_the_selector() -> None:
    # The value is `x"} or other{b="`: printed unescaped (promql-parser 0.12 does), the text
    # would hold a second, unscoped selector.
    crafted = r'foo{a="x\"} or other{b=\""}'
    out = scope_query(crafted, "namespace", "team-a")
    assert len(selectors(out)) == 1 and scoped_everywhere(out)
    assert selectors(out)[0][0] == ("a", str(pp.MatchOp.Equal), 'x"} or other{b="')


def test_backslashes_and_strings_keep_their_value() -> None:
    out = scope_query(r'label_replace(x{a=~"\\d+\\.x"}, "d", "q\"\\", "a", "(.*)")', "ns", "t")
    assert out == r'label_replace(x{a=~"\\d+\\.x",ns="t"}, "d", "q\"\\", "a", "(.*)")'


@pytest.mark.parametrize("query", ["sum(", 'x{a="b" or c="d"}', ""])
def test_what_cannot_be_parsed_or_rewritten_is_refused_with_the_field(query: str) -> None:
    with pytest.raises(QueryNotScoped, match=r"spec\.autoscaling\.metric\.query"):
        scope_query(query, "namespace", "team-a")


def test_the_operator_scopes_its_own_query_to_the_jobs_namespaces() -> None:
    out = scope_query_to_any("max by (namespace, gtj) (gaudi3_train_step)", "namespace", ["b", "a"])
    assert out == 'max by (namespace, gtj)(gaudi3_train_step{namespace=~"a|b"})'
    weird = scope_query_to_any("x", "namespace", ["a.b"])
    assert weird == r'x{namespace=~"a\\.b"}'


def test_quote_follows_gos_rules() -> None:
    assert quote('a"b\\c\nd\x01') == r'"a\"b\\c\nd\x01"'


def test_prometheus_parses_the_scoped_queries_as_we_do(tmp_path: Path) -> None:
    """promtool (Prometheus' own parser) accepts every rewritten query."""
    queries = [
        'sum(rate(foo{gtj="j"}[5m])) by (x)',
        r'foo{a="x\"} or other{b=\""}',
        r'label_replace(x{a=~"\\d+"}, "d", "q\"\\", "a", "(.*)")',
        "max_over_time(up[10m:1m]) + rate(x[1h30m] @ start()) + y offset 5m",
        'foo{a="é\\n"}',
    ]
    rules = {
        "groups": [
            {
                "name": "scoped",
                "rules": [
                    {"record": f"scoped:q{i}", "expr": scope_query(q, "namespace", "team-a")}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
