"""docs/troubleshooting.md has an entry (a `### \\`Reason\\`` heading) for every condition and
event reason the operator can emit, and no entry for a reason it cannot.

The reasons are read from the operator's source (tests/unit/docs/reasons.py): every
argument given to a `reason` parameter, every `(type, reason, message)` event tuple and
`(status, reason, message)` condition tuple, followed back to its string literals through
variables, constants, enums, function returns and parameters. Where that cannot follow an
expression, the expression must be explained below: which enum's values it carries, or why
it adds no reason of its own. A new emit site the collector cannot follow fails the test
until it is made followable (a constant, a literal) or explained here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from unit.docs.reasons import Collector, Found, Site

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "docs" / "troubleshooting.md"

# (file under gaudi_operator/, expression) -> the enum whose values it carries, or None.
EXPLAINED: dict[tuple[str, str], str | None] = {
    # A field typed with an enum: every value of the enum can be emitted through it.
    ("autoscaling/loop.py", "decision.reason.value"): "Reason",  # autoscaling.policy.Reason
    ("failover/policy.py", "self.reason.value"): "FailureReason",  # Failure.to_last_failure
    ("failover/policy.py", "primary.reason.value"): "FailureReason",  # the Restarting reason
    ("jobs/plan.py", "status.phase.value"): "Phase",  # kstatus Reconciling / Stalled reasons
    ("jobs/plan.py", "decision.primary.reason.value"): "FailureReason",  # spares: Restarting
    # Reasons carried in an object, collected where the object is built.
    ("jobs/plan.py", "e"): None,  # Event(*e) of failover's (type, reason, message) tuples
    ("jobs/plan.py", "fo.condition"): None,  # failover.step's (status, reason, message)
    ("jobs/plan.py", "fo.fail"): None,  # (FAIL_BY_RULE or RESTART_LIMIT, message), as above
    ("jobs/reconciler.py", "e.reason"): None,  # posting the plan's Event objects
    ("jobs/plan.py", "e.reason"): None,  # failover's RestartingWorkers event, reworded (spares)
    ("queueing/effects.py", "d.events"): None,  # queueing.policy.decide's say() events
    ("queueing/effects.py", "d.queued"): None,  # queueing.policy.decide's say() condition
    # Copies of the reason another condition already has.
    ("jobs/plan.py", "invalid.reason"): None,
    ("jobs/plan.py", "failed.reason"): None,
    ("jobs/plan.py", "restarting.reason"): None,
    # Kueue's own reasons, passed through (the page's "Kueue's own reasons").
    ("queueing/policy.py", "c.get('reason')"): None,
    ("queueing/policy.py", "evicted.get('reason')"): None,
    # Not emitted: what a pod itself says, read into the observation (WorkerPod.reason).
    ("jobs/observation.py", "term.get('reason')"): None,
    ("jobs/observation.py", "status.get('reason')"): None,
    # Not a reason: DisruptionLog.pending shares its name with WorkloadView.pending.
    ("failover/signals.py", "gone.failure"): None,
}

HEADING = re.compile(r"^###\s+(.*)$", re.M)
NAME = re.compile(r"`(\w+)`")


@pytest.fixture(scope="module")
def collector() -> Collector:
    return Collector()


@pytest.fixture(scope="module")
def found(collector: Collector) -> Found:
    return collector.collect()


def emitted(collector: Collector, found: Found) -> dict[str, str]:
    """Reason -> where (one place, for the failure message)."""
    out = {
        reason: _where(min(sites, key=lambda s: (s.file, s.line)))
        for reason, sites in found.reasons.items()
    }
    for (file, expr), enum in EXPLAINED.items():
        if enum is not None:
            for value in collector.enums[enum].values():
                out.setdefault(value, f"{file}: {expr} ({enum})")
    return out


def _where(site: Site) -> str:
    return f"{site.file}:{site.line}: {site.expr}"


def documented() -> set[str]:
    names: set[str] = set()
    for heading in HEADING.findall(PAGE.read_text()):
        names.update(NAME.findall(heading))
    return names


def test_every_reason_the_operator_emits_has_an_entry(collector: Collector, found: Found) -> None:
    reasons = emitted(collector, found)
    missing = sorted(set(reasons) - documented())
    assert not missing, "no `### `Reason`` entry in docs/troubleshooting.md for:\n" + "\n".join(
        f"  {r}  ({reasons[r]})" for r in missing
    )


def test_every_entry_names_a_reason_the_operator_emits(collector: Collector, found: Found) -> None:
    stale = sorted(documented() - set(emitted(collector, found)))
    assert not stale, f"docs/troubleshooting.md has entries the operator never emits: {stale}"


def test_every_emit_site_is_followed_or_explained(found: Found) -> None:
    unexplained = sorted(
        (s for s in found.unresolved if (s.file, s.expr) not in EXPLAINED),
        key=lambda s: (s.file, s.line),
    )
    assert not unexplained, (
        "reasons the collector cannot follow to a literal; use a constant or a literal, or "
        "explain the expression in EXPLAINED:\n" + "\n".join(f"  {_where(s)}" for s in unexplained)
    )


def test_no_explanation_is_stale(found: Found) -> None:
    sites = {(s.file, s.expr) for s in found.unresolved}
    assert set(EXPLAINED) <= sites, f"explained but gone: {sorted(set(EXPLAINED) - sites)}"


def test_the_page_has_the_headline_reasons() -> None:
    # A guard on the parsing itself: entries that must be there are found.
    assert {"NoFeasibleNode", "InsufficientHPUs", "RestartLimitExceeded", "Stalled"} <= documented()


SAMPLE = """
from enum import StrEnum

DONE = "AllDone"

class Why(StrEnum):
    SLOW = "TooSlow"

@dataclass
class Event:
    type: str
    reason: str
    message: str

def post_event(clients, body, type_, reason, message): ...

def pick(fast):
    return ("Fast", "ok") if fast else ("Slow", "meh")

def finish(body, reason, message):
    post_event(None, body, "Normal", reason, message)

def later():
    return (False, Why.SLOW.value, "m")

def run(body, x, computed):
    finish(body, "Finished" if x else DONE, "m")
    why, text = pick(x)
    events = [Event("Warning", why, text)]
    status, reason, message = later()
    post_event(None, body, "Normal", f"{computed}Thing", "m")
    return ("Warning", "FromTuple", "m")
"""


def test_the_collector_follows_reasons_through_the_code(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text(SAMPLE)
    found = Collector(tmp_path).collect()
    assert set(found.reasons) == {"Finished", "AllDone", "Fast", "Slow", "TooSlow", "FromTuple"}
    assert {s.expr for s in found.unresolved} == {"f'{computed}Thing'"}
