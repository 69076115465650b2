"""How the chaos run reads the API server's audit log (tests/chaos.py): kwok's late deletes
of a new pod, pods POSTed twice, and a deposed leader's writes after the takeover. The
chaos run's exact restart counts lean on the first, so it is pinned here on made-up
records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chaos import Pause, duplicate_creates, fenced, kwok_flakes
from gaudi_devtools.cluster.audit import Event

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
KWOK = "kwok/v0.8.0 (linux/amd64)"
OPERATOR = "gaudi-operator/vm_a (operator)"
TEST = "OpenAPI-Generator/37.0.3/python"


def ev(
    at: float,
    verb: str,
    name: str,
    agent: str,
    code: int = 200,
    resource: str = "pods",
    ns: str = "chaos",
) -> Event:
    t = T0 + timedelta(seconds=at)
    return Event(verb, "u", agent, resource, ns, name, code, t, t)


def test_a_kwok_delete_that_finishes_someone_elses_deletion_is_not_a_flake() -> None:
    events = [
        ev(0, "create", "j-worker-0", OPERATOR, 201),
        ev(1, "delete", "j-worker-0", OPERATOR),  # graceful: deletionTimestamp
        ev(1.1, "delete", "j-worker-0", KWOK),  # kwok finishes it
        ev(2, "create", "j-worker-0", OPERATOR, 201),
        ev(3, "delete", "j-worker-0", KWOK, 404),  # late, but found nothing
    ]
    assert kwok_flakes(events, "chaos") == []


def test_a_late_kwok_delete_of_the_new_pod_of_a_name_is_a_flake() -> None:
    late = ev(2.05, "delete", "j-worker-0", KWOK)
    events = [
        ev(0, "create", "j-worker-0", OPERATOR, 201),
        ev(1, "delete", "j-worker-0", OPERATOR),  # a Failed pod: gone at once
        ev(2, "create", "j-worker-0", OPERATOR, 201),
        late,
    ]
    assert kwok_flakes(events, "chaos") == [(late, False)]
    assert kwok_flakes(events, "other") == []


def test_a_flake_on_a_pod_the_test_had_failed_is_told_apart() -> None:
    late = ev(3, "delete", "j-worker-1", KWOK)
    events = [
        ev(0, "create", "j-worker-1", OPERATOR, 201),
        ev(2, "patch", "j-worker-1", TEST),  # fail_pod
        ev(2.5, "patch", "j-worker-1", KWOK, resource="pods/status"),
        late,
    ]
    assert kwok_flakes(events, "chaos") == [(late, True)]


def test_a_pod_create_refused_as_existing_is_a_duplicate() -> None:
    twice = ev(1, "create", "j-worker-0", OPERATOR, 409)
    events = [ev(0, "create", "j-worker-0", OPERATOR, 201), twice, ev(2, "create", "p", TEST, 409)]
    assert duplicate_creates(events, "chaos") == [twice]


def test_a_deposed_leaders_write_after_the_takeover_is_found() -> None:
    old, new = "gaudi-operator/vm_a (", "gaudi-operator/vm_b ("
    pause = Pause(old, new, T0)
    took = ev(7, "update", "chaos-leader", new + "lease)", resource="leases")
    before = ev(0.5, "patch", "j", old + "operator)", resource="gauditrainingjobs/status")
    assert fenced([before, took], "chaos-leader", pause) is None
    after = ev(8, "patch", "j", old + "operator)", resource="gauditrainingjobs/status")
    assert "j" in (fenced([before, took, after], "chaos-leader", pause) or "")
    assert "no takeover" in (fenced([before], "chaos-leader", pause) or "")
