"""The Helm chart's RBAC allows every request the operator makes for Kueue, as the API
server's own authorizer answers for the chart's service account. (The full operator under
the chart's token runs in tests/cluster/chart on a cluster of its own; here another
operator would compete with the session's for the same jobs.)"""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from cluster.gtj import ROOT

CHART = ROOT / "charts" / "gaudi-operator"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}

# (verb, resource, subresource): what gaudi_operator.queueing.effects and its wiring ask for.
QUEUEING_REQUESTS = [
    ("get", "workloads.kueue.x-k8s.io", ""),
    ("list", "workloads.kueue.x-k8s.io", ""),
    ("watch", "workloads.kueue.x-k8s.io", ""),
    ("create", "workloads.kueue.x-k8s.io", ""),
    ("delete", "workloads.kueue.x-k8s.io", ""),
    ("patch", "workloads.kueue.x-k8s.io", ""),
    ("patch", "workloads.kueue.x-k8s.io", "status"),
    ("get", "workloadpriorityclasses.kueue.x-k8s.io", ""),
    ("get", "priorityclasses.scheduling.k8s.io", ""),
    ("patch", "gauditrainingjobs.gaudi.scalestarter.dev", ""),
    ("patch", "gauditrainingjobs.gaudi.scalestarter.dev", "status"),
    ("update", "gauditrainingjobs.gaudi.scalestarter.dev", "finalizers"),
]


def test_the_charts_rbac_lets_the_operator_queue_jobs_through_kueue(
    kueue: Any, crd: Any, kubectl: Any, namespace: str
) -> None:
    release = f"kq{namespace.removeprefix('t-')}"
    rendered = subprocess.run(
        [kueue.tool("helm"), "template", release, str(CHART), "-n", namespace],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d and d.get("kind") in RBAC_KINDS]
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))
    try:
        who = f"system:serviceaccount:{namespace}:{release}-gaudi-operator"
        denied = []
        for verb, resource, sub in QUEUEING_REQUESTS:
            args = ["auth", "can-i", verb, resource, "-n", namespace, f"--as={who}"]
            if sub:
                args.append(f"--subresource={sub}")
            out = kubectl(*args, check=False)
            if out.stdout.strip() != "yes":
                denied.append(f"{verb} {resource}{'/' + sub if sub else ''}")
        assert denied == []
        # And nothing beyond: the account cannot touch Kueue's queues.
        out = kubectl(
            "auth", "can-i", "create", "clusterqueues.kueue.x-k8s.io", f"--as={who}", check=False
        )
        assert out.stdout.strip() == "no"
    finally:
        cluster_scoped = [
            f"{d['kind'].lower()}/{d['metadata']['name']}"
            for d in docs
            if d["kind"] in ("ClusterRole", "ClusterRoleBinding")
        ]
        kubectl("delete", "--ignore-not-found", *cluster_scoped, check=False)
