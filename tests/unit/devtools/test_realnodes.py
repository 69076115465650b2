"""Real nodes' pure parts: their DNS records (the EndpointSlice path, rebuilt), their pods'
scrape targets (the kubernetes_sd path, rebuilt) and addresses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gaudi_devtools.cluster.realnodes import allocate_addresses, dns_records, scrape_targets


def _svc(name: str, ns: str = "a", selector: dict[str, str] | None = None, **spec: Any) -> Any:
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": "None", "selector": selector or {"app": name}, **spec},
    }


def _pod(app: str, ip: str, ns: str = "a", ready: bool = True, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{app}-p", "namespace": ns, "labels": {"app": app}},
        "spec": spec,
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_headless_service_names_its_ready_pods_and_their_hostnames() -> None:
    pods = [
        _pod("job", "127.0.20.2", hostname="job-worker-0", subdomain="job"),
        _pod("job", "127.0.20.3", hostname="job-worker-1", subdomain="job"),
    ]
    assert dns_records([_svc("job")], pods) == [
        ("127.0.20.2", "job-worker-0.job.a.svc.cluster.local"),
        ("127.0.20.2", "job.a.svc.cluster.local"),
        ("127.0.20.3", "job-worker-1.job.a.svc.cluster.local"),
        ("127.0.20.3", "job.a.svc.cluster.local"),
    ]


def test_no_record_for_unready_other_namespace_unselected_or_clusterip_services() -> None:
    pods = [
        _pod("job", "127.0.20.2", ready=False, hostname="w", subdomain="job"),
        _pod("job", "127.0.20.3", ns="b", hostname="w", subdomain="job"),
        _pod("other", "127.0.20.4", hostname="w", subdomain="job"),
    ]
    clusterip = _svc("job", clusterIP="10.96.0.9")
    assert dns_records([_svc("job"), clusterip], pods) == []


def test_hostname_record_needs_the_subdomain_to_be_that_service() -> None:
    pods = [_pod("job", "127.0.20.2", hostname="w", subdomain="elsewhere")]
    assert dns_records([_svc("job")], pods) == [("127.0.20.2", "job.a.svc.cluster.local")]


def test_publish_not_ready_addresses_names_unready_pods() -> None:
    pods = [_pod("job", "127.0.20.2", ready=False, hostname="w", subdomain="job")]
    records = dns_records([_svc("job", publishNotReadyAddresses=True)], pods)
    assert ("127.0.20.2", "w.job.a.svc.cluster.local") in records


def test_no_addresses_are_taken_for_no_real_nodes(tmp_path: Path) -> None:
    assert allocate_addresses(tmp_path, "c", 0) == []


def test_addresses_skip_those_other_clusters_keep(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "cluster.json").write_text(
        json.dumps({"addresses": {"gaudi3-real-0": "127.0.20.2", "coredns": "127.0.20.3"}})
    )
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "cluster.json").write_text(
        json.dumps({"addresses": {"gaudi3-real-0": "127.0.20.4"}})
    )
    got = allocate_addresses(tmp_path, "mine", 2)
    assert len(got) == 2 and not {"127.0.20.2", "127.0.20.3"} & set(got)
    assert all(ip.startswith("127.0.20.") for ip in got)


def _scraped(
    name: str, ip: str = "127.0.20.2", notes: dict[str, str] | None = None, **status: Any
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "a",
            "annotations": {"prometheus.io/scrape": "true", **(notes or {})},
        },
        "spec": {
            "nodeName": "gaudi3-real-0",
            "containers": [
                {"ports": [{"containerPort": 9400}, {"containerPort": 53, "protocol": "UDP"}]}
            ],
        },
        "status": {"podIP": ip, "phase": "Running", **status},
    }


def test_annotated_pods_are_scrape_targets_labelled_with_namespace_pod_and_node() -> None:
    pods = [
        _scraped("w-1", "127.0.20.3", {"prometheus.io/port": "9401", "prometheus.io/path": "/m"}),
        _scraped("w-0"),
    ]
    assert scrape_targets(pods) == [
        {
            "targets": ["127.0.20.2:9400"],  # no port annotation: the declared TCP ports
            "labels": {"namespace": "a", "pod": "w-0", "node": "gaudi3-real-0"},
        },
        {
            "targets": ["127.0.20.3:9401"],
            "labels": {
                "namespace": "a",
                "pod": "w-1",
                "node": "gaudi3-real-0",
                "__metrics_path__": "/m",
            },
        },
    ]


def test_unannotated_finished_deleted_or_unplaced_pods_are_not_scraped() -> None:
    plain = _scraped("plain")
    plain["metadata"]["annotations"] = {}
    off = _scraped("off", notes={"prometheus.io/scrape": "false"})
    deleted = _scraped("deleted")
    deleted["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    pods = [plain, off, deleted, _scraped("done", phase="Failed"), _scraped("new", podIP="")]
    assert scrape_targets(pods) == []
