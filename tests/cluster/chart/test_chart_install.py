"""The packaged chart against the real API server: `make chart`'s .tgz installs (release
deployed, objects there, NOTES telling what to do next), and a bad value fails `helm install`
naming its path, with nothing installed.

These tests check what Helm and the API server did, not a running operator
(tests/cluster/chart/test_helm_chart.py runs the operator with the chart's RBAC;
tests/cluster/realnodes/test_operator_in_cluster.py runs the chart's pods from the locally
built image on real nodes)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unit.chart.chart_tools import make_chart

CRD = "crd/gauditrainingjobs.gaudi.scalestarter.dev"


def helm(cluster: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [cluster.tool("helm"), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if check:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_chart(tmp_path_factory.mktemp("dist"))


@pytest.fixture
def release(cluster: Any, kubectl: Any) -> Iterator[tuple[str, str]]:
    """A release name and its own namespace, uninstalled afterwards (the CRD stays: the chart
    keeps it, and other tests use it)."""
    name, ns = f"gaudi-{uuid.uuid4().hex[:6]}", f"chart-{uuid.uuid4().hex[:6]}"
    yield name, ns
    helm(cluster, "uninstall", name, "-n", ns, "--ignore-not-found", check=False)
    kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False)


def test_packaged_chart_installs_and_says_what_to_do_next(
    cluster: Any, kubectl: Any, package: Path, release: tuple[str, str]
) -> None:
    name, ns = release
    # The session's CRD may be there already (the crd fixture applies it; a kept CRD names
    # an earlier release): adopt it, as the chart README says. A fresh cluster needs no flag.
    installed = helm(
        cluster, "install", name, str(package), "-n", ns, "--create-namespace",
        "--set", f"watchNamespaces={{{ns}}}", "--set", "serviceMonitor.interval=15s",
        "--take-ownership",
    )  # fmt: skip
    notes = installed.stdout
    assert f"kubectl -n {ns} apply -f examples/single-node-8hpu.yaml" in notes, notes
    assert f"kubectl -n {ns} get gtj -w" in notes
    assert f"svc/{name}-gaudi-operator-metrics 9090" in notes

    (listed,) = json.loads(helm(cluster, "list", "-n", ns, "-o", "json").stdout)
    assert (listed["name"], listed["status"]) == (name, "deployed")
    assert f"{listed['chart']}.tgz" == package.name  # gaudi-operator-<version>

    full = f"{name}-gaudi-operator"
    kubectl("wait", "--for=condition=Established", "--timeout=60s", CRD)
    for obj in (
        f"deployment/{full}",
        f"serviceaccount/{full}",
        f"service/{full}-metrics",
        f"role/{full}-jobs",
        f"rolebinding/{full}-jobs",
        f"role/{full}-leader-election",
        f"rolebinding/{full}-leader-election",
    ):
        kubectl("get", "-n", ns, obj)
    kubectl("get", f"clusterrole/{full}-cluster")
    # Namespaced: no cluster-wide role for the jobs and their pods.
    assert kubectl("get", f"clusterrole/{full}-jobs", check=False).returncode != 0
    # Namespaced watch: the job permissions are granted in that namespace only.
    can = f"--as=system:serviceaccount:{ns}:{full}"
    here = kubectl("auth", "can-i", "create", "pods", "-n", ns, can, check=False)
    elsewhere = kubectl("auth", "can-i", "create", "pods", "-n", "default", can, check=False)
    assert (here.stdout.strip(), elsewhere.stdout.strip()) == ("yes", "no")
    args = json.loads(kubectl("get", "-n", ns, f"deployment/{full}", "-o", "json").stdout)
    assert f"--namespace={ns}" in args["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("replicaCount=abc", "at '/replicaCount': got string, want integer"),
        ("serviceMonitor.enabeld=true", "at '/serviceMonitor': additional properties 'enabeld'"),
    ],
)
def test_install_with_a_bad_value_fails_naming_it_and_installs_nothing(
    cluster: Any, kubectl: Any, package: Path, release: tuple[str, str], setting: str, named: str
) -> None:
    name, ns = release
    out = helm(
        cluster, "install", name, str(package), "-n", ns, "--create-namespace",
        "--set", setting, check=False,
    )  # fmt: skip
    assert out.returncode != 0, out.stdout
    assert named in out.stderr, out.stderr
    assert helm(cluster, "status", name, "-n", ns, check=False).returncode != 0
    deployments = kubectl("get", "deployments", "-n", ns, "-o", "name", check=False)
    assert deployments.stdout.strip() == ""
