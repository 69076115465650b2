"""The local cluster's parts work together: real API server, scheduler, controller-manager,
kwok Gaudi nodes and Prometheus."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from kubernetes import client

from chaos import fail_pod, node_not_ready, node_ready
from conftest import wait_for

GAUDI_TOLERATION = client.V1Toleration(
    key="habana.ai/gaudi", operator="Exists", effect="NoSchedule"
)


def hpu_pod(name: str, hpus: int, owner: client.V1OwnerReference | None = None) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, owner_references=[owner] if owner else None),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="worker",
                    image="gaudi-train:test",
                    resources=client.V1ResourceRequirements(
                        requests={"habana.ai/gaudi": str(hpus)},
                        limits={"habana.ai/gaudi": str(hpus)},
                    ),
                )
            ],
            tolerations=[GAUDI_TOLERATION],
        ),
    )


def phase(core, ns: str, name: str) -> str | None:
    return core.read_namespaced_pod(name, ns).status.phase


def test_nodes_report_eight_allocatable_hpus(core) -> None:
    nodes = core.list_node(label_selector="habana.ai/device.family=gaudi").items
    assert len(nodes) == 4
    for n in nodes:
        assert n.status.allocatable["habana.ai/gaudi"] == "8"
        assert n.status.capacity["habana.ai/gaudi"] == "8"
        assert "hugepages-2Mi" in n.status.allocatable
        ready = next(c for c in n.status.conditions if c.type == "Ready")
        assert ready.status == "True"


def test_server_reports_pinned_version(kubectl) -> None:
    out = json.loads(kubectl("version", "-o", "json").stdout)
    server = out["serverVersion"]["gitVersion"]
    assert server.startswith("v1.") and server != "v0.0.0"
    assert out["serverVersion"]["minor"] != ""


def test_eight_hpu_pod_is_scheduled_and_runs(core, namespace) -> None:
    core.create_namespaced_pod(namespace, hpu_pod("full-node", 8))
    wait_for(lambda: phase(core, namespace, "full-node") == "Running", 30, what="pod Running")
    pod = core.read_namespaced_pod("full-node", namespace)
    assert pod.spec.node_name.startswith("gaudi3-node-")


def test_nine_hpu_pod_stays_pending_unschedulable(core, namespace) -> None:
    core.create_namespaced_pod(namespace, hpu_pod("too-big", 9))

    def unschedulable() -> bool:
        pod = core.read_namespaced_pod("too-big", namespace)
        conds = pod.status.conditions or []
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conds)

    wait_for(unschedulable, 30, what="PodScheduled=False/Unschedulable")
    assert phase(core, namespace, "too-big") == "Pending"


def test_deleting_owner_garbage_collects_owned_pod(core, namespace) -> None:
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_pod(namespace, hpu_pod("owned", 1, ref))
    wait_for(lambda: phase(core, namespace, "owned") == "Running", 30, what="pod Running")
    core.delete_namespaced_config_map("owner", namespace)

    def gone() -> bool:
        return not core.list_namespaced_pod(namespace, field_selector="metadata.name=owned").items

    wait_for(gone, 60, what="garbage collection of the owned pod")


def test_injected_failure_fails_pod_with_chosen_exit_code(core, namespace) -> None:
    core.create_namespaced_pod(namespace, hpu_pod("victim", 2))
    wait_for(lambda: phase(core, namespace, "victim") == "Running", 30, what="pod Running")
    fail_pod(core, namespace, "victim", exit_code=42, reason="Error")
    wait_for(lambda: phase(core, namespace, "victim") == "Failed", 30, what="pod Failed")
    term = core.read_namespaced_pod("victim", namespace).status.container_statuses[0]
    assert term.state.terminated.exit_code == 42
    assert term.state.terminated.reason == "Error"


def test_injected_notready_node_gets_not_ready_taint(core) -> None:
    node = "gaudi3-node-3"
    node_not_ready(core, node)
    try:

        def tainted() -> bool:
            taints = core.read_node(node).spec.taints or []
            return any(t.key == "node.kubernetes.io/not-ready" for t in taints)

        wait_for(tainted, 30, what="the not-ready taint from kube-controller-manager")
    finally:
        node_ready(core, node)
    wait_for(
        lambda: (
            not any(
                t.key == "node.kubernetes.io/not-ready"
                for t in core.read_node(node).spec.taints or []
            )
        ),
        30,
        what="the node to recover",
    )


class _Exporter(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"# TYPE gaudi3_smoke_value gauge\ngaudi3_smoke_value 7\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def exporter(cluster):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadingHTTPServer(("127.0.0.1", port), _Exporter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = cluster.targets_dir / f"smoke-{port}.json"
    target.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {"test": "smoke"}}]))
    yield port
    target.unlink(missing_ok=True)
    server.shutdown()


def test_prometheus_answers_queries_and_scrapes_test_target(cluster, exporter) -> None:
    url = f"{cluster.prometheus_url}/api/v1/query"

    def scraped() -> list:
        r = httpx.get(url, params={"query": 'gaudi3_smoke_value{test="smoke"}'}, timeout=5)
        r.raise_for_status()
        return r.json()["data"]["result"]

    result = wait_for(scraped, 30, what="Prometheus to scrape the test exporter")
    assert float(result[0]["value"][1]) == 7.0
