"""signals.py, the HPU half: the health query's result parsed per worker pod, and the node
cache's account of when a node's allocatable HPUs dropped — no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from gaudi_operator.api import FailureReason
from gaudi_operator.clients.prometheus import Sample
from gaudi_operator.failover import policy as failover
from gaudi_operator.failover.signals import NodeCache, hpu_faults_from_samples

Kind = failover.HpuFaultKind


def sample(value: float, **labels: str) -> Sample:
    return Sample(value, 0.0, labels)


def card(pod: str = "job-worker-1", ns: str = "team-a", **labels: str) -> dict[str, str]:
    return {"pod_namespace": ns, "pod_name": pod, "id": "3", "Serial": "AN0103", **labels}


# --- the health query's result -------------------------------------------------------------


def test_each_fault_kind_is_read_from_the_fault_label() -> None:
    got = hpu_faults_from_samples(
        [
            sample(2, **card(fault="ecc")),
            sample(126, **card(fault="temperature")),
            sample(1, **card(pod="job-worker-0", fault="link")),
        ]
    )
    assert {k: [f.kind for f in v] for k, v in got.items()} == {
        ("team-a", "job-worker-1"): [Kind.ECC, Kind.TEMPERATURE],
        ("team-a", "job-worker-0"): [Kind.LINK_DOWN],
    }
    ecc, hot = got[("team-a", "job-worker-1")]
    assert ecc.message == (
        "the Gaudi exporter reports HPU 3 (serial AN0103): "
        "2 rows with double-bit ECC errors pending replacement"
    )
    assert "on-chip temperature 126 C reached its shutdown threshold" in hot.message


def test_zero_and_nan_values_are_no_fault() -> None:
    assert hpu_faults_from_samples([sample(0, **card()), sample(float("nan"), **card())]) == {}


def test_a_card_no_pod_holds_affects_no_job() -> None:
    # Intel's exporter writes pod_name="" for a free card; Prometheus drops empty labels.
    free = {k: v for k, v in card(fault="ecc").items() if k not in ("pod_name", "pod_namespace")}
    assert hpu_faults_from_samples([sample(5, **free)]) == {}


def test_a_custom_query_without_the_fault_label_is_an_hpu_fault() -> None:
    got = hpu_faults_from_samples([sample(97, pod_namespace="team-a", pod_name="w-0")])
    [f] = got[("team-a", "w-0")]
    assert f.kind == Kind.OTHER and "reports a fault (97)" in f.message


# --- allocatable habana.ai/gaudi below capacity (the device plugin's Unhealthy) -----------

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def node(allocatable: int, capacity: int = 8) -> dict[str, Any]:
    return {
        "metadata": {"name": "n0"},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "capacity": {"habana.ai/gaudi": str(capacity)},
            "allocatable": {"habana.ai/gaudi": str(allocatable)},
        },
    }


def verdict(cache: NodeCache, started: datetime) -> Any:
    return failover.node_failure(cache.lookup(["n0"])["n0"], T0 + timedelta(hours=1), 30, started)


def test_a_drop_seen_while_watching_fails_the_workers_that_started_before_it() -> None:
    cache = NodeCache()
    cache.update("ADDED", node(8))
    assert cache.update("MODIFIED", node(7))  # a change worth a pass
    since = cache.lookup(["n0"])["n0"].hpus_missing_since
    assert since is not None
    reason, _, message = verdict(cache, since - timedelta(minutes=1))
    assert reason == FailureReason.HPU_UNHEALTHY and "7 of 8" in message
    # A worker placed after the drop got healthy cards.
    assert verdict(cache, since + timedelta(seconds=1)) is None


def test_a_drop_already_there_when_the_operator_looked_fails_nobody() -> None:
    # An operator restart, or a leader change, on a node with a long-dead card.
    cache = NodeCache()
    cache.update(None, node(7))
    assert verdict(cache, T0 - timedelta(days=3)) is None
    cache.update("MODIFIED", node(7))  # heartbeats change nothing
    assert verdict(cache, T0 - timedelta(days=3)) is None


def test_another_card_going_bad_later_is_a_drop_seen_while_watching() -> None:
    cache = NodeCache()
    cache.update(None, node(7))
    cache.update("MODIFIED", node(6))
    reason, _, _ = verdict(cache, T0 - timedelta(days=3))
    assert reason == FailureReason.HPU_UNHEALTHY


# --- waking the jobs a new fault concerns (the HPU health loop) ---------------------------


def test_a_new_fault_wakes_the_job_whose_worker_holds_the_card_once() -> None:
    from gaudi_operator.failover.wiring import jobs_with_new_faults
    from gaudi_operator.runtime.placement import PodPlaces

    places = PodPlaces()
    for i, (key, pod) in enumerate(
        [
            (("team-a", "llama"), "llama-worker-0"),
            (("team-a", "bert"), "bert-worker-0"),
            (("team-b", "llama"), "llama-worker-0"),
        ]
    ):
        places.update(key, f"uid-{i}", pod, "node-0", unplaced=False, gone=False)
    pods = places.job_of
    ecc = failover.HpuFault(Kind.ECC, "HPU 3: ECC")
    faults = {("team-a", "llama-worker-0"): (ecc,)}
    wake, seen = jobs_with_new_faults(pods, faults, frozenset())
    assert wake == [("team-a", "llama")]  # not team-b's job of the same name
    wake, seen = jobs_with_new_faults(pods, faults, seen)
    assert wake == []  # the same fault again: the job was woken already
    hot = failover.HpuFault(Kind.TEMPERATURE, "HPU 1: hot")
    wake, _ = jobs_with_new_faults(pods, {("team-a", "llama-worker-0"): (ecc, hot)}, seen)
    assert wake == [("team-a", "llama")]
