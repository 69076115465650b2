"""HPU faults from Intel's Gaudi metric exporter, end to end: the fixture exporter
(gaudi_devtools.gaudi_exporter, Intel's schema) on every simulated node, scraped by the
cluster's real Prometheus, read by the real operator process through its default health
query. ECC, over-temperature and a scale-out link going down each restart the job off the
node; a card that reads zeros, and a link down under a single worker, restart nothing.

(A card the device plugin marks Unhealthy, seen as allocatable habana.ai/gaudi dropping, is
test_failover.py::test_hpu_allocatable_drop_is_hpu_unhealthy_and_excludes_the_node.)"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cluster.gtj import create_job, get_job, job_body, worker_pods
from conftest import wait_for
from gaudi_devtools.gaudi_exporter import GaudiExporterFleet, api_pod_source
from gaudi_operator.failover.signals import HPU_HEALTH_INTERVAL_ENV, HPU_HEALTH_POD_GRACE_ENV

pytestmark = pytest.mark.cluster

GEN = "gaudi.scalestarter.dev/generation"
HEALTH_INTERVAL = 1.0  # the operator's HPU health query, every second here (default 5 s)
POD_GRACE = 2.0  # one scrape (1 s) and the fixture's pod refresh (0.5 s), with a margin
# Long enough to have seen a fault: from injection to lastFailure takes 1-2 s here (a
# scrape, a health query, a pass; the failover tests below print it), and 10 s holds ten
# scrapes and ten health queries.
QUIET_WINDOW = 10.0


@pytest.fixture(scope="module")
def exporter_operator(operator: Any, cluster: Any) -> Iterator[Any]:
    saved = dict(operator.env)
    operator.env.update(
        {HPU_HEALTH_INTERVAL_ENV: str(HEALTH_INTERVAL), HPU_HEALTH_POD_GRACE_ENV: str(POD_GRACE)}
    )
    operator.restart("--prometheus-url", cluster.prometheus_url)
    yield operator
    operator.env.clear()
    operator.env.update(saved)


@pytest.fixture(scope="module")
def fleet(cluster: Any, core: Any) -> Iterator[GaudiExporterFleet]:
    gaudi = sorted(
        n.metadata.name
        for n in core.list_node().items
        if (n.status.capacity or {}).get("habana.ai/gaudi")
    )
    # No rate limit: Intel's 5 s would leave the 1 s scrapes mostly 429 (docs/gaudi.md).
    f = GaudiExporterFleet(
        cluster.targets_dir,
        f"intel-exporter-{os.getpid()}",
        gaudi,
        api_pod_source(cluster),
        min_scrape_interval=0,
    )
    yield f
    f.close()


def hpu_faults(op: Any) -> float:
    """The operator's gaudi_operator_hpu_faults, all kinds: its last health reading."""
    text = op.metrics()
    return sum(
        float(v) for v in re.findall(r"^gaudi_operator_hpu_faults\{[^}]*\} (\S+)$", text, re.M)
    )


@pytest.fixture
def exporter(
    exporter_operator: Any, fleet: GaudiExporterFleet, hpus_free: Any
) -> Iterator[GaudiExporterFleet]:
    """The fleet, all cards healthy; after the test, healthy again and gone from both
    Prometheus and the operator's last reading, so no fault outlives its test."""
    hpus_free()
    fleet.heal()
    yield fleet
    fleet.heal()
    wait_for(
        lambda: hpu_faults(exporter_operator) == 0,
        timeout=30,
        what="the operator's HPU health reading clear of faults",
    )


def prom(cluster: Any, promql: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{cluster.prometheus_url}/api/v1/query", params={"query": promql}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]


def status(custom: Any, ns: str, name: str) -> dict[str, Any]:
    return get_job(custom, ns, name).get("status") or {}


def running(core: Any, ns: str, job: str, n: int, gen: int = 0) -> list[Any] | None:
    pods = [p for p in worker_pods(core, ns, job) if not p.metadata.deletion_timestamp]
    ok = [p for p in pods if p.status.phase == "Running" and p.metadata.labels[GEN] == str(gen)]
    return ok if len(pods) == n and len(ok) == n else None


def start(
    custom: Any, core: Any, cluster: Any, ns: str, name: str, replicas: int, **policy: Any
) -> list[Any]:
    """A job of `replicas` 4-HPU workers, running, and its cards in Prometheus with the
    workers' names: the exporter has been scraped healthy before any fault."""
    spec = {
        "hpusPerWorker": 4,
        "workers": {"replicas": replicas},
        "failurePolicy": {"backoffSeconds": 0, **policy},
    }
    create_job(custom, ns, job_body(name, **spec))
    pods: list[Any] = wait_for(
        lambda: running(core, ns, name, replicas), timeout=90, what=f"{name} running"
    )  # type: ignore[assignment]
    held = f'habanalabs_device_config{{pod_namespace="{ns}",pod_name=~"{name}-worker-[0-9]+"}}'
    wait_for(
        lambda: len(prom(cluster, held)) == 4 * replicas,
        timeout=30,
        what=f"{name}'s cards scraped with its workers' names",
    )
    return pods


def failover(
    custom: Any, core: Any, ns: str, name: str, replicas: int, bad: str
) -> tuple[dict[str, Any], float]:
    """Wait for the restart the fault causes: (status, seconds to lastFailure) once the
    new generation runs off the bad node."""
    t0 = time.monotonic()
    wait_for(
        lambda: status(custom, ns, name).get("lastFailure"),
        timeout=45,
        what=f"{name}: a failure from the exporter",
    )  # type: ignore[assignment]
    seen = time.monotonic() - t0
    after = wait_for(lambda: running(core, ns, name, replicas, gen=1), timeout=60, what="restarted")
    assert all(p.spec.node_name != bad for p in after)  # type: ignore[union-attr]
    return status(custom, ns, name), seen


def test_double_bit_ecc_rows_restart_the_job_off_the_node(
    exporter: GaudiExporterFleet, cluster: Any, core: Any, custom: Any, namespace: str
) -> None:
    pods = start(custom, core, cluster, namespace, "ecc", 2)
    bad = pods[1].spec.node_name
    [(node, card), *_] = exporter.held_by(namespace, "ecc-worker-1")
    assert node == bad
    exporter.ecc(node, card.index, rows=2)
    st, seen = failover(custom, core, namespace, "ecc", 2, bad)
    last = st["lastFailure"]
    assert (last["reason"], last["node"], last["pod"]) == ("HPUUnhealthy", bad, "ecc-worker-1")
    assert f"HPU {card.index} (serial {card.serial})" in last["message"]
    assert "double-bit ECC" in last["message"]
    assert st["excludedNodes"] == [bad]
    print(f"ECC fault to lastFailure: {seen:.1f}s")


def test_over_temperature_restarts_the_job_off_the_node(
    exporter: GaudiExporterFleet, cluster: Any, core: Any, custom: Any, namespace: str
) -> None:
    pods = start(custom, core, cluster, namespace, "hot", 2)
    bad = pods[0].spec.node_name
    [(node, card), *_] = exporter.held_by(namespace, "hot-worker-0")
    exporter.overheat(node, card.index)
    st, seen = failover(custom, core, namespace, "hot", 2, bad)
    last = st["lastFailure"]
    assert (last["reason"], last["node"]) == ("HPUUnhealthy", bad)
    assert "shutdown threshold" in last["message"] and st["excludedNodes"] == [bad]
    print(f"temperature fault to lastFailure: {seen:.1f}s")


def test_a_scale_out_link_down_restarts_a_multi_worker_job_with_its_own_reason(
    exporter: GaudiExporterFleet, cluster: Any, core: Any, custom: Any, namespace: str
) -> None:
    # A rule can match the reason: here not counted, so maxRestarts 0 still restarts.
    rules = [{"reasons": ["ScaleOutLinkDown"], "action": "RestartIgnoreLimit"}]
    pods = start(custom, core, cluster, namespace, "link", 2, maxRestarts=0, rules=rules)
    bad = pods[1].spec.node_name
    [(node, card), *_] = exporter.held_by(namespace, "link-worker-1")
    exporter.link_down(node, card.index)
    st, seen = failover(custom, core, namespace, "link", 2, bad)
    last = st["lastFailure"]
    assert (last["reason"], last["node"]) == ("ScaleOutLinkDown", bad)
    assert "scale-out port(s) down" in last["message"]
    assert st["restarts"] == 0 and st["excludedNodes"] == [bad] and st["phase"] != "Failed"
    print(f"link fault to lastFailure: {seen:.1f}s")


def test_zeros_and_a_single_workers_link_restart_nothing(
    exporter: GaudiExporterFleet, cluster: Any, core: Any, custom: Any, namespace: str
) -> None:
    pods = start(custom, core, cluster, namespace, "zeros", 2)
    solo = start(custom, core, cluster, namespace, "solo", 1)
    uids = {p.metadata.uid for p in pods + solo}
    [(n0, unreadable), *_] = exporter.held_by(namespace, "zeros-worker-0")
    [(n1, unread_threshold), *_] = exporter.held_by(namespace, "zeros-worker-1")
    [(n2, solo_card), *_] = exporter.held_by(namespace, "solo-worker-0")
    # A card rhlml cannot read at all: every number 0 and every link "down" after being up.
    exporter.zeros(n0, unreadable.index)
    # A card whose thresholds were not read: 0, under a normal on-chip temperature.
    exporter.zeros(
        n1,
        unread_threshold.index,
        ["temperature_threshold_shutdown", "temperature_threshold_slowdown"],
    )
    # A scale-out link down, under a job that never uses the scale-out network.
    exporter.link_down(n2, solo_card.index)
    # Prometheus has the zeros and the down link for these workers: the operator can see them.
    zeros = f'habanalabs_temperature_threshold_shutdown{{pod_namespace="{namespace}"}} == 0'
    down = f'habanalabs_nic_port_status{{pod_namespace="{namespace}",pod_name="solo-worker-0"}}'
    wait_for(
        lambda: prom(cluster, zeros) and prom(cluster, f"{down} == 0"),
        timeout=15,
        what="the zeros and the down link in Prometheus",
    )
    time.sleep(QUIET_WINDOW)
    for name in ("zeros", "solo"):
        st = status(custom, namespace, name)
        assert st.get("restarts") == 0 and not st.get("lastFailure"), (name, st)
    now = {p.metadata.uid for n in ("zeros", "solo") for p in worker_pods(core, namespace, n)}
    assert now == uids  # the same workers, untouched
