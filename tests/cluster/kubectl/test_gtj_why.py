"""`kubectl gtj why` on jobs that cannot run, against the real API server, scheduler and
this tree's operator: it says why from the job's Scheduled condition and the pods' own
scheduler messages, and names the fix. The jobs here never start a rank (kwok pods serve
no metrics), so these tests read no metrics endpoint."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cluster.gtj import create_job, get_job, job_body
from cluster.kubectl_gtj import gtj
from conftest import wait_for
from gaudi_kubectl.kube import Kube, KubectlFlags
from gaudi_kubectl.metrics import Target

pytestmark = pytest.mark.cluster


def scheduled(custom: Any, ns: str, name: str, reason: str) -> None:
    def says() -> bool:
        conds = (get_job(custom, ns, name).get("status") or {}).get("conditions") or []
        return any(
            c["type"] == "Scheduled" and c["status"] == "False" and c["reason"] == reason
            for c in conds
        )

    wait_for(says, timeout=60, what=f"Scheduled=False ({reason}) on gtj/{name}")


def test_why_a_job_wanting_more_hpus_than_the_nodes_have_says_so_and_names_the_fix(
    operator: Any, cluster: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    gaudi = [
        n
        for n in core.list_node().items
        if (n.status.allocatable or {}).get("habana.ai/gaudi") == "8"
    ]
    replicas = len(gaudi) + 1  # one worker of 8 HPUs more than there are nodes
    spec = {"workers": {"replicas": replicas}, "failurePolicy": {"placementTimeoutSeconds": 0}}
    create_job(custom, namespace, job_body("huge", hpusPerWorker=8, **spec))
    scheduled(custom, namespace, "huge", "InsufficientHPUs")

    out = gtj(cluster, "why", "huge", "-n", namespace)
    first = out.splitlines()[0]
    assert (
        first == "gtj/huge is Pending: not enough free HPUs: the workers do not fit on the nodes."
    )
    assert "(Scheduled=False, InsufficientHPUs)" in out
    assert f"1 of {replicas} workers cannot be placed" in out
    assert "Insufficient habana.ai/gaudi" in out  # the scheduler's own words
    # The fix, with this job's numbers and command.
    assert f"{replicas} workers x 8 habana.ai/gaudi = {8 * replicas} HPUs at once" in out
    assert "`kubectl scale gtj huge --replicas=N`" in out
    # The pod that waits, and the scheduler's event about it.
    assert f"huge-worker-{replicas - 1}" in out and "FailedScheduling" in out


def test_why_a_job_whose_node_selector_matches_no_node_names_the_selector(
    operator: Any, cluster: Any, custom: Any, namespace: str
) -> None:
    selector = {"gaudi3.scalestarter.dev/pool": "nonexistent"}
    body = job_body("nowhere", hpusPerWorker=1, template={"spec": {"nodeSelector": selector}})
    create_job(custom, namespace, body)
    scheduled(custom, namespace, "nowhere", "NodeSelectorMismatch")

    out = gtj(cluster, "why", "nowhere", "-n", namespace)
    assert out.startswith(
        "gtj/nowhere is Pending: no node matches the workers' node selector or affinity."
    )
    assert "(Scheduled=False, NodeSelectorMismatch)" in out
    assert "didn't match Pod's node affinity/selector" in out
    assert "nodeSelector asks for gaudi3.scalestarter.dev/pool=nonexistent" in out
    assert "`kubectl label node NODE KEY=VALUE`" in out

    # The overview lists it Pending, no rank numbers yet; scripts get the same as JSON.
    (row,) = gtj(cluster, "-n", namespace).splitlines()[1:]
    assert row.split()[:8] == ["nowhere", "Pending", "0/1", "-", "-", "-", "-", "0"]
    got = json.loads(gtj(cluster, "nowhere", "-n", namespace, "-o", "json"))
    assert (got["phase"], got["step"], got["ranks"]) == ("Pending", None, [])


def test_a_user_who_may_not_use_the_pod_proxy_is_told_so(
    operator: Any,
    cluster: Any,
    core: Any,
    custom: Any,
    namespace: str,
    kubectl: Any,
    hpus_free: Any,
) -> None:
    """Impersonating a viewer who may read jobs and pods but not pods/proxy: the API
    server refuses the proxy before it connects anywhere, and the view says what is
    missing instead of showing blanks."""
    hpus_free()
    viewer = f"system:serviceaccount:{namespace}:viewer"
    kubectl("create", "serviceaccount", "viewer", "-n", namespace)
    kubectl(
        "create", "role", "viewer", "-n", namespace, "--verb=get,list",
        "--resource=gauditrainingjobs.gaudi.scalestarter.dev,pods,events",
    )  # fmt: skip
    kubectl(
        "create",
        "rolebinding",
        "viewer",
        "-n",
        namespace,
        "--role=viewer",
        f"--serviceaccount={namespace}:viewer",
    )
    create_job(custom, namespace, job_body("small", hpusPerWorker=1))
    wait_for(
        lambda: (get_job(custom, namespace, "small").get("status") or {}).get("phase") == "Running",
        timeout=60,
        what="gtj/small Running",
    )
    out = gtj(cluster, "small", "-n", namespace, f"--as={viewer}")
    assert "gtj/small in " in out and ": Running" in out
    # This machine's pods have loopback IPs, which the API server never proxies to, so
    # the view reads them directly; a cluster's pods go through the pod proxy, asked
    # here as the viewer for the same pod (RBAC refuses before any connection).
    pod = "small-worker-0"
    flags = KubectlFlags(
        kubeconfig=str(cluster.kubeconfig), as_user=viewer, kubectl=str(cluster.tool("kubectl"))
    )
    with Kube(flags) as kube:
        scraped = kube.scrape([Target(namespace, pod, 9400)])
    assert scraped.texts == {Target(namespace, pod, 9400): None}
    assert scraped.problem is not None
    assert "forbidden (RBAC: get on pods/proxy); pass --prometheus-url" in scraped.problem
    # `why` needs no proxy: the viewer gets its answer.
    why = gtj(cluster, "why", "small", "-n", namespace, f"--as={viewer}")
    assert why.startswith("gtj/small is Running: 1/1 workers ready. Nothing to do.")
