"""The Helm chart installs a working operator: its CRD (crds/, rendered by templates/crd.yaml),
and RBAC that is enough for the real operator, running with the chart's service-account
token, to run a job.

It uses a cluster of its own, so no other operator is reconciling the same jobs.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cluster.gtj import EXAMPLES, ROOT, OperatorProcess
from conftest import wait_for
from gaudi_devtools.cluster import Cluster
from gaudi_devtools.cluster.cluster import Settings

CHART = ROOT / "charts" / "gaudi-operator"
RELEASE, NS = "gaudi", "gaudi-system"
SERVICE_ACCOUNT = f"{RELEASE}-gaudi-operator"


@pytest.fixture(scope="module")
def helm_cluster() -> Iterator[Cluster]:
    c = Cluster(f"helm-{os.getpid()}")
    c.up(Settings(gaudi_nodes=2))
    try:
        yield c
    finally:
        c.delete()


def helm(c: Cluster, *args: str) -> str:
    out = subprocess.run(
        [c.tool("helm"), "--kubeconfig", str(c.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def token_kubeconfig(c: Cluster, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's service account, nothing more."""
    token = c.kubectl("create", "token", SERVICE_ACCOUNT, "-n", NS, "--duration=1h").stdout
    admin = yaml.safe_load(c.kubeconfig.read_text())
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": "operator", "user": {"token": token.strip()}}],
        "contexts": [
            {
                "name": "operator",
                "context": {"cluster": admin["clusters"][0]["name"], "user": "operator"},
            }
        ],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_chart_lints_and_renders_the_crd_from_crds(helm_cluster: Cluster) -> None:
    helm(helm_cluster, "lint", str(CHART))
    rendered = helm(helm_cluster, "template", RELEASE, str(CHART))
    kinds = [d["kind"] for d in yaml.safe_load_all(rendered) if d]
    assert "CustomResourceDefinition" in kinds and "Deployment" in kinds
    crd_in_chart = next(
        d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "CustomResourceDefinition"
    )
    # The repository's crds/ file, kept on uninstall.
    annotations = crd_in_chart["metadata"].pop("annotations")
    assert annotations == {"helm.sh/resource-policy": "keep"}
    assert crd_in_chart == yaml.safe_load((ROOT / "crds" / "gauditrainingjobs.yaml").read_text())


def chart_operator_args(c: Cluster) -> tuple[int, list[str]]:
    """The Deployment's replicas and container args, as the release rendered them (the
    ports and log format are the test's own; the Lease identity is the pod's name, which the
    kubelet fills in from `$(POD_NAME)`)."""
    docs = yaml.safe_load_all(helm(c, "get", "manifest", RELEASE, "-n", NS))
    deployment = next(d for d in docs if d and d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    own = ("--metrics-port=", "--health-port=", "--log-format=", "--leader-election-identity=")
    return deployment["spec"]["replicas"], [a for a in args if not a.startswith(own)]


def can_i(c: Cluster, *args: str) -> str:
    account = f"--as=system:serviceaccount:{NS}:{SERVICE_ACCOUNT}"
    return c.kubectl("auth", "can-i", *args, account, check=False).stdout.strip()


@pytest.mark.parametrize(
    ("mode", "job_ns"),
    [("cluster-wide", "default"), ("namespaced", "team-a")],
)
def test_two_replicas_with_the_charts_rbac_elect_one_leader_that_runs_a_job(
    helm_cluster: Cluster, tmp_path: Path, mode: str, job_ns: str
) -> None:
    c = helm_cluster
    c.kubectl("create", "namespace", job_ns, check=False)
    watch = [] if mode == "cluster-wide" else ["--set", f"watchNamespaces={{{job_ns}}}"]
    helm(
        c,
        "upgrade",
        "--install",
        "--reset-values",
        RELEASE,
        str(CHART),
        "-n",
        NS,
        "--create-namespace",
        "--set",
        "prometheusURL=" + c.prometheus_url,
        *watch,
    )
    c.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/gauditrainingjobs.gaudi.scalestarter.dev",
    )
    # Nothing it may not do: the chart's account is no cluster admin.
    assert can_i(c, "delete", "nodes") == "no"
    finalizers = ("gauditrainingjobs.gaudi.scalestarter.dev", "--subresource=finalizers")
    assert can_i(c, "update", *finalizers, "-n", job_ns) == "yes"
    assert can_i(c, "update", "leases", "-n", NS) == "yes"
    assert can_i(c, "update", "leases", "-n", job_ns) == "no"
    # Namespaced: pods of the watched namespace only, none cluster-wide.
    everywhere = "yes" if mode == "cluster-wide" else "no"
    assert can_i(c, "list", "pods", "--all-namespaces") == everywhere
    assert can_i(c, "create", "pods", "-n", job_ns) == "yes"

    replicas, args = chart_operator_args(c)
    assert replicas == 2 and "--leader-elect" in args
    kubeconfig = token_kubeconfig(c, tmp_path / "sa.kubeconfig")
    ops = [
        OperatorProcess(kubeconfig, tmp_path / f"op-{i}.log", leader_elect=True)
        for i in range(replicas)
    ]
    try:
        for op in ops:
            op.start(*args)
        c.kubectl("apply", "-n", job_ns, "-f", str(EXAMPLES / "single-node-8hpu.yaml"))

        def running() -> bool:
            out = c.kubectl("get", "gtj", "single-node", "-n", job_ns, "-o", "json")
            return json.loads(out.stdout).get("status", {}).get("phase") == "Running"

        wait_for(running, timeout=90, what="the job to run under the chart's RBAC")
        logs = [op.log.read_text(errors="replace") for op in ops]
        leaders = [op for op, log in zip(ops, logs, strict=True) if "leading: the lease" in log]
        assert len(leaders) == 1, "\n".join(op.tail(30) for op in ops)
        for op, log in zip(ops, logs, strict=True):
            assert "Forbidden" not in log and " 403" not in log, op.tail(60)
    finally:
        for op in ops:
            op.stop()
        c.kubectl("delete", "gtj", "single-node", "-n", job_ns, "--ignore-not-found")
