"""The chart's values for clusters without a pod network or kube-proxy change nothing unless
set: ordinary clusters keep pod networking, the kubelet's API server address and listeners
on every interface of the pod's own network namespace. (Rendered only; the release runs on
real nodes in tests/cluster/realnodes/test_operator_in_cluster.py.)"""

from __future__ import annotations

from typing import Any

import yaml

from unit.chart.chart_tools import CHART, helm


def _operator_pod(*args: str) -> dict[str, Any]:
    out = helm("template", "gaudi", str(CHART), "--show-only", "templates/deployment.yaml", *args)
    return dict(yaml.safe_load(out.stdout)["spec"]["template"]["spec"])


def test_defaults_keep_pod_networking_and_the_kubelets_api_server_address() -> None:
    pod = _operator_pod()
    assert "hostNetwork" not in pod and "dnsPolicy" not in pod
    [c] = pod["containers"]
    assert not any(a.startswith(("--metrics-address", "--health-address")) for a in c["args"])
    assert {e["name"] for e in c["env"]}.isdisjoint(
        {"POD_IP", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}
    )


def test_host_network_binds_the_pod_ip_and_api_server_overrides_the_service_env() -> None:
    pod = _operator_pod(
        "--set", "hostNetwork=true", "--set", "apiServer.host=127.0.0.1",
        "--set", "apiServer.port=6443",
    )  # fmt: skip
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    [c] = pod["containers"]
    assert {"--metrics-address=$(POD_IP)", "--health-address=$(POD_IP)"} <= set(c["args"])
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["KUBERNETES_SERVICE_HOST"]["value"] == "127.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT"]["value"] == "6443"
