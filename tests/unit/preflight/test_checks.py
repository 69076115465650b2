"""The preflight's decisions (gaudi_operator.preflight.checks): each check over API objects
as the API server returns them, pass, warn, fail or skip, and a fix for anything but a pass."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from gaudi_operator import api
from gaudi_operator.jobs.gaudi import NodeLabel
from gaudi_operator.preflight import checks
from gaudi_operator.preflight.checks import (
    DryRun,
    ExporterSeries,
    Result,
    Settings,
    Status,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
CRD = yaml.safe_load((ROOT / "crds" / "gauditrainingjobs.yaml").read_text())
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SCALE_OUT = NodeLabel.parse(api.SCALE_OUT_READY_LABEL)


def established(crd: dict[str, Any]) -> dict[str, Any]:
    crd = copy.deepcopy(crd)
    crd["status"] = {"conditions": [{"type": "Established", "status": "True"}]}
    return crd


def assert_row(r: Result, status: Status, *phrases: str) -> None:
    assert r.status == status, r
    for phrase in phrases:
        assert phrase in f"{r.found} || {r.fix}", (phrase, r)
    if status == Status.PASS:
        assert r.fix == ""
    elif status in (Status.WARN, Status.FAIL):
        assert r.fix, r


# --- CRD -------------------------------------------------------------------------------------
def test_crd_served_with_this_releases_schema_passes() -> None:
    assert_row(checks.check_crd(established(CRD), CRD), Status.PASS, "v1alpha1 served")


def test_crd_missing_fails_with_how_to_install() -> None:
    assert_row(checks.check_crd(None, CRD), Status.FAIL, "no CRD", "kubectl apply --server-side")


def test_crd_of_another_release_fails_naming_both_schemas() -> None:
    other = established(CRD)
    schema = other["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["spec"]["properties"]["hpusPerWorker"]["description"] = "changed"
    r = checks.check_crd(other, CRD)
    assert_row(r, Status.FAIL, checks.schema_digest(other), checks.schema_digest(CRD), "upgrade")


def test_crd_not_serving_v1alpha1_or_not_established_fails() -> None:
    off = established(CRD)
    off["spec"]["versions"][0]["served"] = False
    assert_row(checks.check_crd(off, CRD), Status.FAIL, "not served")
    pending = copy.deepcopy(CRD)
    pending["status"] = {"conditions": [{"type": "Established", "status": "False"}]}
    assert_row(checks.check_crd(pending, CRD), Status.FAIL, "not established")


def test_schema_digest_ignores_whole_floats_and_metadata() -> None:
    served = established(CRD)
    served["metadata"]["annotations"] = {"helm.sh/resource-policy": "keep"}
    props = served["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    props["spec"]["properties"]["hpusPerWorker"]["maximum"] = 8.0  # Helm writes floats
    assert checks.schema_digest(served) == checks.schema_digest(CRD)


# --- the operator's Lease --------------------------------------------------------------------
def lease(holder: str | None, renewed: datetime, duration: int = 10) -> dict[str, Any]:
    return {
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
    }


def test_a_fresh_lease_passes_and_names_the_holder() -> None:
    r = checks.check_operator(lease("op-0_ab12", NOW - timedelta(seconds=3)), NOW, "ns", "gop")
    assert_row(r, Status.PASS, "Lease ns/gop held by op-0_ab12", "renewed 3s ago")


@pytest.mark.parametrize(
    ("obj", "phrase"),
    [
        (None, "no Lease ns/gop"),
        (lease(None, NOW), "has no holder"),
        (lease("op-0", NOW - timedelta(seconds=25)), "expired 15s ago"),
    ],
)
def test_no_lease_no_holder_or_an_expired_one_fails(obj: Any, phrase: str) -> None:
    assert_row(checks.check_operator(obj, NOW, "ns", "gop"), Status.FAIL, phrase, "--lease-name")


# --- nodes ----------------------------------------------------------------------------------
def node(
    name: str,
    hpus: int = 8,
    allocatable: int | None = None,
    *,
    hugepages: str = "64Gi",
    ready: bool = True,
    labels: dict[str, str] | None = None,
    cordoned: bool = False,
) -> dict[str, Any]:
    capacity = {"cpu": "224", api.HUGEPAGES_RESOURCE: hugepages}
    if hpus:
        capacity[api.GAUDI_RESOURCE] = str(hpus)
    alloc = dict(capacity)
    if hpus:
        alloc[api.GAUDI_RESOURCE] = str(hpus if allocatable is None else allocatable)
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"unschedulable": True} if cordoned else {},
        "status": {
            "capacity": capacity,
            "allocatable": alloc,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def nodes(*objs: dict[str, Any]) -> list[checks.GaudiNode]:
    return checks.gaudi_nodes(objs)


def test_gaudi_nodes_counted_per_node_and_cpu_nodes_ignored() -> None:
    found = nodes(node("g-1"), node("cpu", hpus=0), node("g-0"))
    assert [n.name for n in found] == ["g-0", "g-1"]
    r = checks.check_gaudi_nodes(found, 8)
    assert_row(r, Status.PASS, "2 nodes, 16 of 16 HPUs allocatable", "g-0 8/8, g-1 8/8")


def test_no_gaudi_node_fails_pointing_at_intels_device_plugin() -> None:
    r = checks.check_gaudi_nodes(nodes(node("cpu", hpus=0)), 8)
    assert_row(r, Status.FAIL, "no node advertises habana.ai/gaudi", checks.DEVICE_PLUGIN_MANIFEST)


def test_unhealthy_cards_warn_and_name_the_node() -> None:
    r = checks.check_gaudi_nodes(nodes(node("g-0"), node("g-1", allocatable=6)), 4)
    assert_row(r, Status.WARN, "14 of 16", "unhealthy cards on g-1 (2)", "Unhealthy")


def test_no_node_that_fits_a_worker_fails() -> None:
    r = checks.check_gaudi_nodes(
        nodes(node("g-0", allocatable=7), node("g-1", ready=False), node("g-2", cordoned=True)), 8
    )
    assert_row(r, Status.FAIL, "g-1 8/8 (NotReady)", "g-2 8/8 (cordoned)", "none Ready")


def test_a_not_ready_node_beside_good_ones_warns() -> None:
    r = checks.check_gaudi_nodes(nodes(node("g-0"), node("g-1", ready=False)), 8)
    assert_row(r, Status.WARN, "g-1 8/8 (NotReady)", "g-1 cannot take workers")


@pytest.mark.parametrize(
    ("quantity", "mib"),
    [("64Gi", 65536), ("28992Mi", 28992), ("0", 0), (None, 0), ("2097152Ki", 2048),
     ("1G", 953), ("1073741824", 1024), ("junk", 0), ("3Xi", 0)],
)  # fmt: skip
def test_byte_quantities_in_mebibytes(quantity: Any, mib: int) -> None:
    assert checks.mebibytes(quantity) == mib


# --- device plugin -------------------------------------------------------------------------
def daemonset(name: str, labels: dict[str, str], desired: int = 4, ready: int = 4) -> Any:
    return {
        "metadata": {"name": name, "namespace": "habana-system"},
        "spec": {"template": {"metadata": {"labels": labels}}},
        "status": {"desiredNumberScheduled": desired, "numberReady": ready},
    }


INTEL_DS = ("habanalabs-device-plugin-daemonset", {"name": "habanalabs-device-plugin-ds"})


def test_intels_device_plugin_daemonset_is_found_by_its_pod_label() -> None:
    r = checks.check_device_plugin([daemonset(*INTEL_DS)], checks.DEVICE_PLUGIN_SELECTOR)
    assert_row(r, Status.PASS, "habana-system/habanalabs-device-plugin-daemonset: 4/4 pods ready")


def test_a_device_plugin_with_pods_not_ready_warns() -> None:
    r = checks.check_device_plugin([daemonset(*INTEL_DS, ready=3)], checks.DEVICE_PLUGIN_SELECTOR)
    assert_row(r, Status.WARN, "3/4 pods ready", "describe daemonset")
    none = checks.check_device_plugin([daemonset(*INTEL_DS, 0, 0)], checks.DEVICE_PLUGIN_SELECTOR)
    assert_row(none, Status.WARN, "0/0")


def test_no_device_plugin_fails_and_names_a_lookalike() -> None:
    other = daemonset("gaudi-device-plugin", {"app": "gaudi-dp"})
    r = checks.check_device_plugin([other], checks.DEVICE_PLUGIN_SELECTOR)
    assert_row(r, Status.FAIL, "habana-system/gaudi-device-plugin", "--device-plugin-selector")
    assert_row(checks.check_device_plugin([other], "app=gaudi-dp"), Status.PASS)


def test_selectors_parse_or_say_what_is_wrong() -> None:
    assert checks.parse_selector("a=b, c==d ,e") == {"a": "b", "c": "d", "e": None}
    for bad in ("", "=x", ","):
        with pytest.raises(ValueError, match="key=value"):
            checks.parse_selector(bad)


# --- Prometheus ----------------------------------------------------------------------------
URL = "http://prometheus:9090"
ALL = {m: 32 for m in checks.HEALTH_METRICS}


def test_prometheus_with_every_card_of_the_exporter_passes() -> None:
    r = checks.check_prometheus(URL, ExporterSeries(ALL, 32), "", 32)
    assert_row(r, Status.PASS, "series for 32 cards (nodes advertise 32)")


@pytest.mark.parametrize(
    ("reading", "error", "status", "phrase"),
    [
        (None, "cannot reach Prometheus at x", Status.FAIL, "cannot reach"),
        (ExporterSeries({}, 0), "", Status.FAIL, "no series of Intel's exporter"),
        (
            ExporterSeries({**ALL, "habanalabs_nic_port_status": 0}, 32),
            "",
            Status.WARN,
            "missing habanalabs_nic_port_status",
        ),
        (ExporterSeries(ALL, 24), "", Status.WARN, "the nodes advertise 32"),
    ],
)
def test_prometheus_unreachable_empty_or_partial(
    reading: Any, error: str, status: Status, phrase: str
) -> None:
    assert_row(checks.check_prometheus(URL, reading, error, 32), status, phrase)


def test_no_prometheus_url_warns() -> None:
    assert_row(checks.check_prometheus("", None, "", 8), Status.WARN, "--prometheus-url")


# --- scale-out ------------------------------------------------------------------------------
READY = {"intel.feature.node.kubernetes.io/gaudi-scale-out": "true"}


def test_scale_out_is_checked_only_for_multi_node_jobs() -> None:
    assert checks.check_scale_out([], SCALE_OUT, False).status == Status.SKIP


def test_scale_out_two_ready_nodes_pass_one_warns_none_fails_with_the_label() -> None:
    two = nodes(node("g-0", labels=READY), node("g-1", labels=READY), node("g-2"))
    assert_row(checks.check_scale_out(two, SCALE_OUT, True), Status.PASS, "2 of 3", "not: g-2")
    one = nodes(node("g-0", labels=READY), node("g-1"))
    assert_row(checks.check_scale_out(one, SCALE_OUT, True), Status.WARN, "needs two")
    none = nodes(node("g-0"), node("g-1", labels={SCALE_OUT.key: "false"}))
    r = checks.check_scale_out(none, SCALE_OUT, True)
    assert_row(r, Status.FAIL, "0 of 2", f"kubectl label node NAME {api.SCALE_OUT_READY_LABEL}")


def test_scale_out_with_a_key_only_label_or_the_gate_off() -> None:
    key = NodeLabel.parse("example.com/fabric")
    r = checks.check_scale_out(nodes(node("g-0")), key, True)
    assert_row(r, Status.FAIL, "kubectl label node NAME example.com/fabric=true")
    assert_row(checks.check_scale_out(nodes(node("g-0")), None, True), Status.WARN, "gate is off")


# --- huge pages ------------------------------------------------------------------------------
def test_huge_pages_against_the_default_request() -> None:
    assert 3624 * 8 == 28992
    good = nodes(node("g-0"), node("g-1", hugepages="30000Mi"))
    assert_row(checks.check_hugepages(good, 3624, 8), Status.PASS, "2 of 2", "28992Mi")
    mixed = nodes(node("g-0"), node("g-1", hugepages="0"))
    assert_row(checks.check_hugepages(mixed, 3624, 8), Status.WARN, "short: g-1 0Mi")
    r = checks.check_hugepages(nodes(node("g-0", hugepages="0")), 3624, 8)
    assert_row(r, Status.FAIL, "0 of 1", "vm.nr_hugepages=14496", "--hugepages-mi-per-hpu")
    assert checks.check_hugepages(good, 3624, 1).status == Status.PASS
    assert checks.check_hugepages(good, 0, 8).status == Status.SKIP


# --- Pod Security ----------------------------------------------------------------------------
def ns(level: str | None) -> dict[str, Any]:
    labels = {checks.PSA_ENFORCE: level} if level else {}
    return {"metadata": {"name": "team-a", "labels": labels}}


def test_what_each_pod_security_level_refuses_of_a_worker() -> None:
    assert checks.pod_security_refusals("privileged", True, ["SYS_NICE"]) == []
    assert checks.pod_security_refusals("baseline", True, ["SYS_NICE", "CHOWN"]) == [
        "hostIPC",
        "capability SYS_NICE",
    ]
    assert checks.pod_security_refusals("restricted", False, ["CHOWN"]) == ["capability CHOWN"]
    assert checks.pod_security_refusals("baseline", False, []) == []


def test_the_dry_run_decides_when_it_could_run() -> None:
    assert_row(checks.check_pod_security("team-a", ns(None), DryRun(True)), Status.PASS, "dry run")
    refused = DryRun(False, 'violates PodSecurity "baseline:latest": host namespaces')
    r = checks.check_pod_security("team-a", ns("baseline"), refused)
    assert_row(
        r,
        Status.FAIL,
        "violates PodSecurity",
        "kubectl label namespace team-a pod-security.kubernetes.io/enforce=privileged",
    )


@pytest.mark.parametrize(
    ("level", "status", "phrase"),
    [
        ("privileged", Status.PASS, "enforce=privileged"),
        ("baseline", Status.FAIL, "refuses hostIPC and capability SYS_NICE"),
        ("restricted", Status.FAIL, "refuses hostIPC"),
        (None, Status.WARN, "cluster's default level"),
    ],
)
def test_without_a_dry_run_the_enforce_label_decides(
    level: str | None, status: Status, phrase: str
) -> None:
    unanswered = DryRun(False, "you may not create pods here", unanswered=True)
    r = checks.check_pod_security("team-a", ns(level), unanswered)
    assert_row(r, status, phrase, "you may not create pods here")


def test_the_dry_run_answers_when_the_namespace_cannot_be_read() -> None:
    r = checks.check_pod_security("team-a", {}, DryRun(True), labels_known=False)
    assert_row(r, Status.PASS, "labels are not readable to you", "admitted (dry run)")


def test_a_missing_namespace_fails() -> None:
    r = checks.check_pod_security("team-a", None, DryRun(False, "", unanswered=True))
    assert_row(r, Status.FAIL, "no namespace team-a", "kubectl create namespace team-a")


def test_the_dry_run_pod_is_the_operators_worker_without_an_owner() -> None:
    pod = checks.dry_run_pod(Settings(namespace="team-a", multi_node=True, hpus_per_worker=4))
    spec = pod["spec"]
    assert spec["hostIPC"] is True
    worker = spec["containers"][0]
    assert "SYS_NICE" in worker["securityContext"]["capabilities"]["add"]
    assert worker["resources"]["limits"][api.HUGEPAGES_RESOURCE] == "14496Mi"
    assert worker["resources"]["limits"][api.GAUDI_RESOURCE] == 4
    assert "ownerReferences" not in pod["metadata"]
    assert pod["metadata"]["namespace"] == "team-a"
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert "gaudi-scale-out" in str(terms)
    # A fresh name each time: a dry run never collides with a pod that exists.
    assert checks.dry_run_pod(Settings())["metadata"]["name"] != pod["metadata"]["name"]


# --- access ---------------------------------------------------------------------------------
def answers(*denied: str) -> dict[str, bool]:
    return {v: v not in denied for v in checks.JOB_VERBS}


def test_access_create_denied_fails_other_verbs_warn() -> None:
    assert_row(checks.check_access(answers(), "team-a", "you (alice)"), Status.PASS, "may create")
    r = checks.check_access(answers("create"), "team-a", "you (alice)")
    assert_row(r, Status.FAIL, "may not create", "kubectl create role gtj-author -n team-a")
    assert_row(checks.check_access(answers("delete"), "team-a", "bob"), Status.WARN, "not delete")


# --- Kueue ----------------------------------------------------------------------------------
LQ = {
    "spec": {"clusterQueue": "cq"},
    "status": {"conditions": [{"type": "Active", "status": "True"}]},
}


@pytest.mark.parametrize(
    ("versions", "local", "cluster", "status", "phrase"),
    [
        (None, None, None, Status.FAIL, "not served"),
        (["v1beta1"], None, None, Status.FAIL, "v1beta2"),
        (["v1beta2"], None, None, Status.FAIL, "no LocalQueue team-a/gaudi"),
        (["v1beta2"], LQ, None, Status.FAIL, "'cq', which does not exist"),
        (["v1beta1", "v1beta2"], LQ, {}, Status.PASS, "LocalQueue team-a/gaudi -> ClusterQueue cq"),
    ],
)
def test_kueue_with_a_queue_named(
    versions: Any, local: Any, cluster: Any, status: Status, phrase: str
) -> None:
    assert_row(checks.check_kueue("gaudi", "team-a", versions, local, cluster), status, phrase)


def test_kueue_inactive_queue_warns_and_no_queue_skips() -> None:
    inactive = copy.deepcopy(LQ)
    inactive["status"]["conditions"][0].update(
        status="False", message="ClusterQueue cq is inactive"
    )
    r = checks.check_kueue("gaudi", "team-a", ["v1beta2"], inactive, {})
    assert_row(r, Status.WARN, "is inactive")
    assert checks.check_kueue("", "team-a", None, None, None).status == Status.SKIP


def test_exit_code_fails_only_on_a_failed_check() -> None:
    row = checks.result
    assert checks.exit_code([row("crd", Status.PASS, ""), row("kueue", Status.SKIP, "")]) == 0
    assert checks.exit_code([row("crd", Status.WARN, "", "x")]) == 0
    assert checks.exit_code([row("crd", Status.PASS, ""), row("access", Status.FAIL, "", "x")]) == 1
