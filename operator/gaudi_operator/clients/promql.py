"""PromQL text the operator sends on a job's behalf, scoped to the job's namespace.

A job's `spec.autoscaling.metric.query` is written by whoever may create a job, and runs
against the operator's Prometheus, which holds every namespace's series. So, as
prom-label-proxy does (github.com/prometheus-community/prom-label-proxy,
injectproxy/enforce.go), every vector and matrix selector of the query gets the matcher
`<label>="<the job's namespace>"`, and a selector that already names that label any other
way (`namespace="other"`, `namespace=~".*"`, `namespace!=""`) refuses the whole query
(prom-label-proxy's -error-on-replace, stricter: only the identical matcher is accepted).
The label is one Prometheus attaches from service discovery (`namespace`, with
`honor_labels: false`), so a pod cannot claim another namespace's series as its own.

Parsing, walking and printing use `promql-parser` (GreptimeTeam's Rust parser, Python
bindings; PromQL of Prometheus 2.45). Its printer (0.12.0) writes string values without
escaping them (fixed upstream in GreptimeTeam/promql-parser#146, not released yet), which
would let a crafted label value close its quotes and add an unscoped selector. So strings
are printed as opaque placeholders and quoted here the way PromQL (Go) reads them, and the
text that goes out is parsed again and must be the same query: anything else is refused.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import promql_parser as pp

from gaudi_operator.clients.prometheus import PromQLError

DEFAULT_NAMESPACE_LABEL = "namespace"
QUERY_FIELD = "spec.autoscaling.metric.query"


class QueryNotScoped(PromQLError):
    """A job's query cannot be limited to the job's namespace; it is never sent."""


@dataclass(frozen=True)
class _Enforced:
    op: pp.MatchOp
    label: str
    value: str

    def text(self) -> str:
        return f"{self.label}{_op(self.op)}{quote(self.value)}"


_OPS = (
    (pp.MatchOp.Equal, "="),
    (pp.MatchOp.NotEqual, "!="),
    (pp.MatchOp.Re, "=~"),
    (pp.MatchOp.NotRe, "!~"),
)  # MatchOp is not hashable


def _op(op: pp.MatchOp) -> str:
    return next(text for o, text in _OPS if o == op)


_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# RE2 metacharacters, for the regex matcher of several namespaces (DNS labels need none of
# them, but a value is escaped rather than trusted).
_RE2_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")


def quote(value: str) -> str:
    """A PromQL double-quoted string literal (Go's escaping rules, as Prometheus reads it)."""
    out = ['"']
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def scope_query(promql: str, label: str, namespace: str, *, field: str = QUERY_FIELD) -> str:
    """`promql` with `label="namespace"` on every selector; raises QueryNotScoped (naming
    `field`) when it cannot be parsed, or a selector names `label` another way."""
    return _enforce(promql, _Enforced(pp.MatchOp.Equal, _label(label), namespace), field)


def scope_query_to_any(promql: str, label: str, namespaces: Iterable[str]) -> str:
    """The operator's own query over several jobs at once: every selector limited to the
    jobs' namespaces (`label=~"a|b"`). For queries the operator writes, not a job."""
    values = sorted(set(namespaces))
    if not values:
        raise ValueError("no namespace to scope the query to")
    regex = "|".join(_RE2_SPECIAL.sub(r"\\\1", v) for v in values)
    return _enforce(promql, _Enforced(pp.MatchOp.Re, _label(label), regex), "query")


def _label(label: str) -> str:
    if not _LABEL_NAME.match(label):
        raise ValueError(f"{label!r} is not a Prometheus label name")
    return label


def _enforce(promql: str, enforced: _Enforced, field: str) -> str:
    def refuse(why: str) -> QueryNotScoped:
        return QueryNotScoped(
            f"{field}: {why}; the operator only runs queries it can limit to the job's "
            f"namespace ({enforced.text()} on every selector)",
            query=promql,
        )

    try:
        expr = pp.parse(promql)
    except ValueError as e:
        raise refuse(f"cannot parse {promql!r}: {e}") from None
    nonce = secrets.token_hex(8)
    conflicts: list[str] = []
    try:
        masked, values = _mask(expr, nonce, enforced, conflicts)
    except ValueError as e:
        raise refuse(f"cannot rewrite {promql!r}: {e}") from None
    if conflicts:
        raise refuse(
            f"{promql!r} selects {', '.join(conflicts)}: a query may not choose the "
            f"{enforced.label!r} label itself"
        )
    text = _unmask(masked, values, nonce)
    if text is None:
        raise refuse(f"cannot rewrite {promql!r}")
    # What is sent must be what was meant: parsed again, the same tree and the same values.
    try:
        again = _mask(pp.parse(text), nonce, None, [])
    except ValueError as e:
        raise refuse(f"rewriting {promql!r} gave text that does not parse ({e})") from None
    if again != (masked, values):
        raise refuse(f"{promql!r} cannot be rewritten faithfully (unusual quoting?)")
    return text


def _mask(
    expr: pp.Expr, nonce: str, enforced: _Enforced | None, conflicts: list[str]
) -> tuple[str, list[str]]:
    """The expression printed with every string value replaced by a placeholder (and the
    enforced matcher added to every selector), and the values in order."""
    values: list[str] = []

    def hole(value: str) -> str:
        values.append(value)
        return f"__gtjq_{nonce}_{len(values) - 1}__"

    def post(node: pp.Expr) -> pp.Expr | None:
        if isinstance(node, pp.VectorSelector):
            if node.matchers.or_matchers:
                raise ValueError(f"{node}: `or` inside a selector is not PromQL")
            kept = []
            for m in node.matchers.matchers:
                if enforced is not None and m.name == enforced.label:
                    if m.op != enforced.op or m.value != enforced.value:
                        conflicts.append(f"{m.name}{_op(m.op)}{quote(m.value)}")
                    continue  # the identical matcher is added back below, once
                kept.append(pp.Matcher(m.op, m.name, hole(m.value)))
            if enforced is not None:
                kept.append(pp.Matcher(enforced.op, enforced.label, hole(enforced.value)))
            node.matchers = pp.Matchers(kept)
            # A new node: transform() keeps the original when handed back the same object.
            return _reparse(str(node), pp.VectorSelector)
        if isinstance(node, pp.StringLiteral):
            return _reparse(f'"{hole(node.val)}"', pp.StringLiteral)
        return None

    return str(pp.transform(expr, post_visit=post)), values


def _reparse(text: str, kind: type[pp.Expr]) -> pp.Expr:
    node = pp.parse(text)
    if not isinstance(node, kind):
        raise ValueError(f"{text!r} did not print back as a {kind.__name__}")
    return node


def _unmask(masked: str, values: list[str], nonce: str) -> str | None:
    """Put the values back, quoted; None unless every placeholder is found exactly once."""
    seen: list[int] = []

    def put(m: re.Match[str]) -> str:
        i = int(m.group(1))
        seen.append(i)
        return quote(values[i]) if i < len(values) else m.group(0)

    text = re.sub(rf'"__gtjq_{nonce}_(\d+)__"', put, masked)
    if sorted(seen) != list(range(len(values))) or nonce in text:
        return None
    return text
