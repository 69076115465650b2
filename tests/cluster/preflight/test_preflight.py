"""`gaudi3 preflight` against the real local cluster: with everything in place every row
passes, and each check broken on purpose turns into a fail that names its fix.

In place, all real objects and processes: the CRD; a `gaudi3 operator` process holding its
Lease; the kwok Gaudi nodes (habana.ai/gaudi, huge pages, the scale-out label); a DaemonSet
shaped like Intel's device plugin manifest (there is no device plugin here: its pods are
kwok's, they register no cards, the nodes advertise them by themselves); the cluster's
Prometheus scraping the Intel-schema fixture exporter on every node; a namespace at Pod
Security `privileged`; Kueue with a LocalQueue; a ServiceAccount allowed to author jobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cluster.gtj import ROOT, OperatorProcess, kubectl_run
from conftest import wait_for
from gaudi_devtools.cluster.processes import free_port
from gaudi_devtools.gaudi_exporter import GaudiExporterFleet, api_pod_source
from gaudi_operator import api
from gaudi_operator.preflight.checks import CHECKS, DEVICE_PLUGIN_SELECTOR, PSA_ENFORCE

pytestmark = pytest.mark.cluster

LEASE = "gaudi-gaudi-operator"  # the chart's Lease name for release "gaudi"
QUEUE = "gaudi"
KUEUE = ("kueue.x-k8s.io", "v1beta2")
AUTHOR = "author"  # a ServiceAccount that may author jobs in the namespace
SCALE_OUT_KEY, SCALE_OUT_VALUE = api.SCALE_OUT_READY_LABEL.split("=")
TREE = os.pathsep.join(str(ROOT / d) for d in ("operator", "devtools", "training-image"))


@pytest.fixture(scope="module")
def ns(cluster: Any, core: Any) -> Iterator[str]:
    """The jobs' namespace, at Pod Security `privileged` as HPU workers need."""
    name = f"pf-{uuid.uuid4().hex[:6]}"
    kubectl_run(cluster, "create", "namespace", name)
    kubectl_run(cluster, "label", "namespace", name, f"{PSA_ENFORCE}=privileged")
    wait_for(lambda: _exists(core, name), what="the namespace's default ServiceAccount")
    yield name
    with contextlib.suppress(AssertionError):
        kubectl_run(cluster, "delete", "namespace", name, "--wait=false")


def _exists(core: Any, ns: str) -> bool:
    try:
        core.read_namespaced_service_account("default", ns)
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def leader(
    cluster: Any, crd: Path, ns: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """A real operator with leader election, serving only `ns`, holding its Lease there."""
    op = OperatorProcess(
        Path(cluster.kubeconfig), tmp_path_factory.mktemp("op") / "op.log", leader_elect=True
    )
    op.start(
        "--namespace", ns, "--leader-election-namespace", ns, "--leader-election-id", LEASE,
        "--prometheus-url", cluster.prometheus_url,
    )  # fmt: skip
    wait_for(lambda: "leading: the lease" in op.log.read_text(), timeout=60, what="the Lease")
    yield op
    op.stop()


@pytest.fixture(scope="module")
def device_plugin(cluster: Any, ns: str) -> Iterator[str]:
    """A DaemonSet shaped like Intel's habana-k8s-device-plugin.yaml, on the Gaudi nodes."""
    ds = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "habanalabs-device-plugin-daemonset", "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"name": "habanalabs-device-plugin-ds"}},
            "template": {
                "metadata": {"labels": {"name": "habanalabs-device-plugin-ds"}},
                "spec": {
                    "nodeSelector": {"habana.ai/gaudi.present": "true"},
                    "tolerations": [{"key": "habana.ai/gaudi", "operator": "Exists"}],
                    "containers": [
                        {
                            "name": "habanalabs-device-plugin-ctr",
                            "image": "vault.habana.ai/docker-k8s-device-plugin/"
                            "docker-k8s-device-plugin:latest",
                        }
                    ],
                },
            },
        },
    }
    kubectl_run(cluster, "apply", "-f", "-", input=json.dumps(ds))

    def all_ready() -> bool:
        out = kubectl_run(cluster, "get", "ds", "-n", ns, ds["metadata"]["name"], "-o", "json")
        st = json.loads(out).get("status") or {}
        return 0 < st.get("desiredNumberScheduled", 0) == st.get("numberReady", -1)

    wait_for(all_ready, timeout=60, what="the device plugin DaemonSet's pods ready")
    yield ds["metadata"]["name"]
    kubectl_run(cluster, "delete", "ds", "-n", ns, ds["metadata"]["name"], "--ignore-not-found")


@pytest.fixture(scope="module")
def exporter(cluster: Any, core: Any) -> Iterator[GaudiExporterFleet]:
    """Intel's exporter schema on every Gaudi node, its cards in Prometheus."""
    gaudi = sorted(
        n.metadata.name
        for n in core.list_node().items
        if (n.status.capacity or {}).get(api.GAUDI_RESOURCE)
    )
    # No rate limit: Intel's 5 s would leave the cluster's 1 s scrapes mostly 429.
    fleet = GaudiExporterFleet(
        cluster.targets_dir,
        f"preflight-{os.getpid()}",
        gaudi,
        api_pod_source(cluster),
        min_scrape_interval=0,
    )

    def scraped() -> bool:
        q = f'count(habanalabs_temperature_onchip{{fixture="{fleet.name}"}})'
        r = httpx.get(f"{cluster.prometheus_url}/api/v1/query", params={"query": q}, timeout=5)
        result = r.json()["data"]["result"]
        return bool(result) and int(result[0]["value"][1]) == 8 * len(gaudi)

    wait_for(scraped, timeout=60, interval=1, what="the exporter's cards in Prometheus")
    yield fleet
    fleet.close()


@pytest.fixture(scope="module")
def queue(cluster: Any, custom: Any, ns: str) -> Iterator[str]:
    """Kueue running, and the LocalQueue QUEUE in `ns` on a ClusterQueue with HPU quota."""
    from gaudi_devtools import kueue as kueue_process

    ours = not kueue_process.ready(cluster)
    kueue_process.start(cluster)
    group, version = KUEUE
    with contextlib.suppress(Exception):  # shared with the queueing tests
        custom.create_cluster_custom_object(
            group, version, "resourceflavors",
            {"apiVersion": f"{group}/{version}", "kind": "ResourceFlavor",
             "metadata": {"name": "gaudi3"}},
        )  # fmt: skip
    cq = f"cq-{ns}"
    quota = [{"name": api.GAUDI_RESOURCE, "nominalQuota": "16"}]
    custom.create_cluster_custom_object(
        group, version, "clusterqueues",
        {"apiVersion": f"{group}/{version}", "kind": "ClusterQueue", "metadata": {"name": cq},
         "spec": {"namespaceSelector": {},
                  "resourceGroups": [{"coveredResources": [api.GAUDI_RESOURCE],
                                      "flavors": [{"name": "gaudi3", "resources": quota}]}]}},
    )  # fmt: skip
    custom.create_namespaced_custom_object(
        group, version, ns, "localqueues",
        {"apiVersion": f"{group}/{version}", "kind": "LocalQueue", "metadata": {"name": QUEUE},
         "spec": {"clusterQueue": cq}},
    )  # fmt: skip

    def active() -> bool:
        lq = custom.get_namespaced_custom_object(group, version, ns, "localqueues", QUEUE)
        conds = (lq.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Active" and c["status"] == "True" for c in conds)

    wait_for(active, timeout=60, what="the LocalQueue active")
    yield QUEUE
    with contextlib.suppress(Exception):
        custom.delete_cluster_custom_object(group, version, "clusterqueues", cq)
    if ours:
        kueue_process.stop(cluster)


@pytest.fixture(scope="module")
def author(cluster: Any, ns: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ServiceAccount with a Role to author jobs in `ns`; a kubeconfig with its token."""

    def kubectl(*args: str) -> str:
        return kubectl_run(cluster, *args)

    kubectl("create", "serviceaccount", AUTHOR, "-n", ns)
    kubectl(
        "create", "role", "gtj-author", "-n", ns, "--verb=create,get,list,watch,delete",
        f"--resource={api.PLURAL}.{api.GROUP}",
    )  # fmt: skip
    kubectl("create", "rolebinding", "gtj-author", "-n", ns, "--role=gtj-author",
            f"--serviceaccount={ns}:{AUTHOR}")  # fmt: skip
    # Its own namespace's labels, as a tenant's "view" commonly allows; no pods.
    kubectl("create", "role", "ns-reader", "-n", ns, "--verb=get", "--resource=namespaces")
    kubectl("create", "rolebinding", "ns-reader", "-n", ns, "--role=ns-reader",
            f"--serviceaccount={ns}:{AUTHOR}")  # fmt: skip
    token = kubectl("create", "token", AUTHOR, "-n", ns, "--duration=1h").strip()
    return token_kubeconfig(cluster, token, tmp_path_factory.mktemp("author") / "kubeconfig")


def token_kubeconfig(cluster: Any, token: str, path: Path) -> Path:
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": admin["clusters"],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "sa",
                        "context": {"cluster": admin["clusters"][0]["name"], "user": "sa"},
                    }
                ],
                "current-context": "sa",
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def ready_cluster(leader: Any, device_plugin: str, exporter: Any, queue: str, author: Path) -> None:
    """Everything a first job needs, in place."""


@pytest.fixture
def preflight(
    cluster: Any, ns: str, ready_cluster: None
) -> Callable[..., tuple[int, dict[str, dict[str, str]], str]]:
    """`preflight(*extra, kubeconfig=...)` runs the real `gaudi3 preflight` with this
    cluster's settings; returns (exit code, rows by check, the output)."""

    def run(
        *extra: str, kubeconfig: Path | None = None, output: str = "json", ours: bool = True
    ) -> tuple[int, dict[str, dict[str, str]], str]:
        mine = [
            "-n", ns, "--lease-namespace", ns, "--lease-name", LEASE,
            "--prometheus-url", cluster.prometheus_url, "--multi-node", "--queue", QUEUE,
        ] if ours else []  # fmt: skip
        cmd = [sys.executable, "-m", "gaudi_operator.cli.main", "preflight", *mine]
        cmd += ["--output", output, *extra]
        env = {
            **os.environ,
            "PYTHONPATH": TREE,
            "KUBECONFIG": str(kubeconfig or cluster.kubeconfig),
        }
        env.pop("GAUDI3_PROMETHEUS_URL", None)
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert "Traceback" not in out.stderr, out.stderr
        if output != "json":
            return out.returncode, {}, out.stdout
        body = json.loads(out.stdout)
        return out.returncode, {c["check"]: c for c in body["checks"]}, out.stdout

    return run


def assert_fails(rows: dict[str, dict[str, str]], check: str, *fix: str) -> None:
    row = rows[check]
    assert row["status"] == "fail", row
    for phrase in fix:
        assert phrase in row["fix"], (phrase, row)


def test_every_row_passes_on_a_ready_cluster(preflight: Any) -> None:
    code, rows, _ = preflight()
    assert [c for c, _ in CHECKS] == list(rows)
    assert [r for r in rows.values() if r["status"] != "pass"] == []
    assert code == 0
    assert "32 of 32 HPUs allocatable" in rows["gaudi-nodes"]["found"]
    assert "series for 32 cards (nodes advertise 32)" in rows["prometheus"]["found"]
    assert "(dry run)" in rows["pod-security"]["found"]
    assert "28992Mi" in rows["hugepages"]["found"]
    # The table, as a terminal or a pod's log shows it.
    code, _, table = preflight(output="table")
    print(table)
    assert code == 0 and "ready: 10 pass" in table
    for _, title in CHECKS:
        assert title in table


@pytest.mark.parametrize("dry_run_pod", [False, True])
def test_the_charts_test_pod_account_may_read_what_every_check_reads(
    preflight: Any, cluster: Any, ns: str, tmp_path: Path, dry_run_pod: bool
) -> None:
    """The chart's preflight pod, rendered for a release "gaudi" in `ns`: its account's
    token and its own arguments (not run from the image: the RBAC and the flags are what
    is checked) pass every row."""
    from unit.chart.chart_tools import CHART, helm

    values = [
        "preflight.enabled=true", f"preflight.namespace={ns}", "preflight.multiNode=true",
        f"preflight.queue={QUEUE}", f"preflight.user=system:serviceaccount:{ns}:{AUTHOR}",
        f"prometheusURL={cluster.prometheus_url}",
        f"preflight.dryRunPod={json.dumps(dry_run_pod)}",
    ]  # fmt: skip
    flags = [a for v in values for a in ("--set", v)]
    out = helm("template", "gaudi", str(CHART), "-n", ns, *flags,
               "--show-only", "templates/preflight.yaml").stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out) if d]
    pod = next(d for d in docs if d["kind"] == "Pod")
    account = [d for d in docs if d["kind"] != "Pod"]
    kubectl_run(cluster, "apply", "-f", "-", input=yaml.safe_dump_all(account))
    try:
        sa = pod["spec"]["serviceAccountName"]
        token = kubectl_run(cluster, "create", "token", sa, "-n", ns, "--duration=10m").strip()
        kubeconfig = token_kubeconfig(cluster, token, tmp_path / "preflight.kubeconfig")
        args = pod["spec"]["containers"][0]["args"]
        code, rows, _ = preflight(*args, kubeconfig=kubeconfig, ours=False)
        assert [r for r in rows.values() if r["status"] != "pass"] == [] and code == 0
        dry = "(dry run)" if dry_run_pod else "(no dry run: you may not create pods here)"
        assert dry in rows["pod-security"]["found"]
        assert f"system:serviceaccount:{ns}:{AUTHOR} in {ns}: may create" in rows["access"]["found"]
    finally:
        kubectl_run(cluster, "delete", "--ignore-not-found", "-f", "-",
                    input=yaml.safe_dump_all(account))  # fmt: skip


def test_nodes_without_the_scale_out_label_fail_naming_the_label(
    preflight: Any, core: Any, kubectl: Any
) -> None:
    gaudi = [
        n.metadata.name
        for n in core.list_node().items
        if (n.metadata.labels or {}).get(SCALE_OUT_KEY) == SCALE_OUT_VALUE
    ]
    assert gaudi
    try:
        for node in gaudi:
            kubectl("label", "node", node, f"{SCALE_OUT_KEY}-")
        code, rows, _ = preflight()
        assert_fails(rows, "scale-out", f"kubectl label node NAME {api.SCALE_OUT_READY_LABEL}")
        assert rows["scale-out"]["found"].startswith(f"0 of {len(gaudi)} Gaudi nodes carry")
        assert code == 1
        # Single-node jobs do not need it.
        code, rows, _ = preflight("--single-node")
        assert rows["scale-out"]["status"] == "skip" and code == 0
    finally:
        for node in gaudi:
            kubectl("label", "node", node, f"{SCALE_OUT_KEY}={SCALE_OUT_VALUE}", "--overwrite")


def test_a_stopped_prometheus_fails_and_a_dead_url_too(preflight: Any, cluster: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    code, rows, _ = preflight("--prometheus-url", dead)
    assert_fails(rows, "prometheus", "--prometheus-url")
    assert "cannot reach Prometheus" in rows["prometheus"]["found"] and code == 1
    cluster.stop_prometheus()
    try:
        code, rows, _ = preflight()
        assert_fails(rows, "prometheus", "check the URL")
        assert code == 1
    finally:
        cluster.start_prometheus()


def test_an_author_without_create_fails_the_access_check(
    preflight: Any, author: Path, ns: str, kubectl: Any
) -> None:
    # The author's own kubeconfig may read none of the cluster-wide objects: only its rows.
    mine = [f"--skip={c}" for c, _ in CHECKS if c not in ("access", "pod-security")]
    code, rows, _ = preflight(*mine, kubeconfig=author)
    assert rows["access"]["status"] == "pass", rows["access"]
    assert f"system:serviceaccount:{ns}:{AUTHOR}" in rows["access"]["found"]
    # It may not create pods: Pod Security is judged from the namespace's label.
    assert rows["pod-security"]["status"] == "pass", rows["pod-security"]
    assert "you may not create pods here" in rows["pod-security"]["found"]
    assert code == 0
    no_create = ["get", "list", "watch", "delete"]
    patch = [{"op": "replace", "path": "/rules/0/verbs", "value": no_create}]
    kubectl("patch", "role", "gtj-author", "-n", ns, "--type=json", "-p", json.dumps(patch))
    try:
        code, rows, _ = preflight(*mine, kubeconfig=author)
        assert_fails(rows, "access", f"kubectl create role gtj-author -n {ns}")
        assert "may not create" in rows["access"]["found"] and code == 1
        # An admin asks on the author's behalf (SubjectAccessReview): the same answer.
        _, rows, _ = preflight("--user", f"system:serviceaccount:{ns}:{AUTHOR}")
        assert_fails(rows, "access", "--verb=create")
    finally:
        kubectl(
            "patch", "role", "gtj-author", "-n", ns, "--type=json",
            "-p", '[{"op": "add", "path": "/rules/0/verbs/0", "value": "create"}]',
        )  # fmt: skip


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_a_namespace_below_privileged_fails_pod_security(
    preflight: Any, ns: str, kubectl: Any, level: str
) -> None:
    kubectl("label", "namespace", ns, f"{PSA_ENFORCE}={level}", "--overwrite")
    try:
        code, rows, _ = preflight()
        assert_fails(rows, "pod-security", f"kubectl label namespace {ns} {PSA_ENFORCE}=privileged")
        # The API server's own words: the dry-run worker violates the level.
        assert f'violates PodSecurity "{level}:latest"' in rows["pod-security"]["found"]
        assert "hostIPC=true" in rows["pod-security"]["found"]
        assert code == 1
    finally:
        kubectl("label", "namespace", ns, f"{PSA_ENFORCE}=privileged", "--overwrite")


def test_no_device_plugin_daemonset_fails(preflight: Any, ns: str, kubectl: Any) -> None:
    code, rows, _ = preflight("--device-plugin-selector", "name=some-other-plugin")
    assert_fails(rows, "device-plugin", "habana-k8s-device-plugin.yaml", "--device-plugin-selector")
    assert f"{ns}/habanalabs-device-plugin-daemonset" in rows["device-plugin"]["found"]  # a hint
    assert code == 1
    code, rows, _ = preflight("--device-plugin-selector", DEVICE_PLUGIN_SELECTOR)
    assert rows["device-plugin"]["status"] == "pass"


def test_huge_pages_beyond_the_nodes_and_a_missing_queue_fail(preflight: Any) -> None:
    code, rows, _ = preflight("--hugepages-mi-per-hpu", "9000", "--queue", "nope")
    assert_fails(rows, "hugepages", "vm.nr_hugepages=36000", "--hugepages-mi-per-hpu")
    assert_fails(rows, "kueue", "examples/kueue/")
    assert code == 1


def test_the_smoke_example_passes_the_crds_validation(kubectl: Any, ns: str, crd: Path) -> None:
    out = kubectl(
        "create", "--dry-run=server", "-n", ns, "-f", str(ROOT / "examples" / "gaudi-smoke.yaml")
    )
    assert "created (server dry run)" in out.stdout


def test_no_operator_holding_the_lease_fails_last(preflight: Any, leader: Any, ns: str) -> None:
    leader.stop()  # SIGTERM: the operator releases its Lease
    code, rows, _ = preflight()
    assert_fails(rows, "operator", f"kubectl -n {ns} get deploy,pods")
    assert "has no holder" in rows["operator"]["found"] and code == 1
    code, rows, _ = preflight("--lease-name", "no-such-lease")
    assert "no Lease" in rows["operator"]["found"]
