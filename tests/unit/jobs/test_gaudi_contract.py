"""Intel's pod contract on the worker pods (jobs.gaudi, docs/gaudi.md): hostIPC and
SYS_NICE, huge pages sized as Intel does, and the scale-out readiness gate with the
Scheduled condition it explains."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from gaudi_operator import api
from gaudi_operator.api import GaudiTrainingJobSpec
from gaudi_operator.jobs import gaudi, manifests
from gaudi_operator.jobs.gaudi import GaudiSettings, NodeLabel, ScaleOut, ScaleOutNodes
from gaudi_operator.jobs.observation import JobView, WorkerPod, observe
from gaudi_operator.jobs.plan import decide

pytestmark = pytest.mark.unit

JOB = manifests.JobRef(name="llama", namespace="team-a", uid="1234-abcd")
INTEL = "intel.feature.node.kubernetes.io/gaudi-scale-out"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def spec(**extra: Any) -> GaudiTrainingJobSpec:
    return GaudiTrainingJobSpec.model_validate({"image": "reg/gaudi-train:1", **extra})


def pod(s: GaudiTrainingJobSpec, **kw: Any) -> dict[str, Any]:
    return manifests.worker_pod_manifest(s, JOB, 0, 0, **kw)


def required_terms(p: dict[str, Any]) -> list[dict[str, Any]]:
    aff = p["spec"].get("affinity") or {}
    req = (aff.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    return (req or {}).get("nodeSelectorTerms") or []


# --- hostIPC and SYS_NICE ------------------------------------------------------------------


def test_hpu_workers_share_the_hosts_ipc_and_may_raise_their_priority() -> None:
    p = pod(spec())
    assert p["spec"]["hostIPC"] is True
    worker = p["spec"]["containers"][0]
    assert worker["securityContext"]["capabilities"]["add"] == ["SYS_NICE"]


def test_a_job_without_hccl_across_pods_turns_both_off() -> None:
    p = pod(spec(gaudi={"hostIPC": False, "sysNice": False}))
    assert "hostIPC" not in p["spec"]
    assert "securityContext" not in p["spec"]["containers"][0]


def test_sys_nice_survives_a_template_security_context() -> None:
    ctx = {"runAsUser": 1000, "capabilities": {"drop": ["ALL"], "add": ["NET_RAW"]}}
    template = {"spec": {"containers": [{"name": "worker", "securityContext": ctx}]}}
    worker = pod(spec(template=template))["spec"]["containers"][0]
    assert worker["securityContext"]["runAsUser"] == 1000
    assert worker["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["NET_RAW", "SYS_NICE"],
    }


def test_a_template_that_turns_host_ipc_off_gets_a_memory_shm() -> None:
    p = pod(spec(template={"spec": {"hostIPC": False}}))
    assert p["spec"]["hostIPC"] is False
    assert "dshm" in [v["name"] for v in p["spec"]["volumes"]]


def test_the_operator_never_sets_what_the_device_plugin_sets() -> None:
    s = spec(workers={"replicas": 2}, hpusPerWorker=4)
    names = {e["name"] for e in pod(s)["spec"]["containers"][0]["env"]}
    assert not names & set(api.DEVICE_PLUGIN_ENV)


# --- huge pages -----------------------------------------------------------------------------


def test_huge_pages_follow_intels_sizing_per_hpu() -> None:
    # Whole 2 MiB pages (the API refuses any other amount), within Intel's 29000Mi for 8.
    for hpus, want in ((1, "3624Mi"), (2, "7248Mi"), (8, "28992Mi")):
        res = pod(spec(hpusPerWorker=hpus))["spec"]["containers"][0]["resources"]
        assert res["requests"]["hugepages-2Mi"] == res["limits"]["hugepages-2Mi"] == want


def test_huge_pages_are_overridable_operator_wide_and_per_job() -> None:
    wide = GaudiSettings(hugepages_mi_per_hpu=5000)
    res = pod(spec(hpusPerWorker=2), settings=wide)["spec"]["containers"][0]["resources"]
    assert res["limits"]["hugepages-2Mi"] == "10000Mi"
    none = pod(spec(), settings=GaudiSettings(hugepages_mi_per_hpu=0))
    assert "hugepages-2Mi" not in none["spec"]["containers"][0]["resources"]["limits"]
    job = spec(resources={"limits": {"hugepages-2Mi": "1Gi"}})
    res = pod(job, settings=wide)["spec"]["containers"][0]["resources"]
    assert res["requests"]["hugepages-2Mi"] == res["limits"]["hugepages-2Mi"] == "1Gi"


# --- hpusPerWorker --------------------------------------------------------------------------


@pytest.mark.parametrize("hpus", [3, 5, 6, 7])
def test_only_intels_card_groups_are_accepted(hpus: int) -> None:
    with pytest.raises(ValueError, match=r"spec\.hpusPerWorker must be 1, 2, 4 or 8"):
        spec(hpusPerWorker=hpus)


def test_the_supported_card_counts_are_accepted() -> None:
    assert [spec(hpusPerWorker=h).hpus_per_worker for h in (1, 2, 4, 8)] == [1, 2, 4, 8]


# --- the scale-out readiness gate -----------------------------------------------------------


def test_workers_of_a_job_that_can_grow_past_one_need_a_scale_out_ready_node() -> None:
    want = {"key": INTEL, "operator": "In", "values": ["true"]}
    for workers in ({"replicas": 2}, {"replicas": 1, "maxReplicas": 4}):
        terms = required_terms(pod(spec(workers=workers)))
        assert terms == [{"matchExpressions": [want]}], workers
    assert required_terms(pod(spec(workers={"replicas": 1}))) == []


def test_the_gate_joins_every_term_of_the_users_affinity_and_the_exclusions() -> None:
    terms = [
        {"matchExpressions": [{"key": "a", "operator": "Exists"}]},
        {"matchExpressions": [{"key": "b", "operator": "Exists"}]},
    ]
    template = {
        "spec": {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
                }
            }
        }
    }
    s = spec(workers={"replicas": 2}, template=template)
    got = required_terms(manifests.worker_pod_manifest(s, JOB, 0, 0, ["n1"]))
    assert len(got) == 2
    for term in got:
        keys = [e["key"] for e in term["matchExpressions"]]
        assert INTEL in keys and "kubernetes.io/hostname" in keys


def test_the_gate_can_be_switched_off_per_job_and_operator_wide() -> None:
    multi = {"replicas": 2}
    opted_out = spec(workers=multi, gaudi={"requireScaleOutReady": False})
    assert required_terms(pod(opted_out)) == []
    off = GaudiSettings(scale_out_label=None)
    assert required_terms(pod(spec(workers=multi), settings=off)) == []
    custom = GaudiSettings(scale_out_label=NodeLabel.parse("example.com/fabric"))
    assert required_terms(pod(spec(workers=multi), settings=custom)) == [
        {"matchExpressions": [{"key": "example.com/fabric", "operator": "Exists"}]}
    ]


def test_the_scale_out_label_setting_reads_key_or_key_value() -> None:
    assert NodeLabel.parse(api.SCALE_OUT_READY_LABEL) == NodeLabel(INTEL, "true")
    assert NodeLabel.parse(" k ") == NodeLabel("k", None)
    assert NodeLabel.parse("k=") == NodeLabel("k", "")
    assert NodeLabel.parse("") is None and NodeLabel.parse("  ") is None
    with pytest.raises(ValueError, match="needs a key"):
        NodeLabel.parse("=true")
    label = NodeLabel(INTEL, "true")
    assert label.on({INTEL: "true"}) and not label.on({INTEL: "false"}) and not label.on({})
    assert NodeLabel("k").on({"k": "anything"})


def test_ready_nodes_are_counted_from_node_events() -> None:
    nodes = ScaleOutNodes(NodeLabel(INTEL, "true"))
    assert nodes.view() is None  # nothing seen yet: no claim either way
    assert nodes.update("ADDED", "n0", {}) is True  # the first event tells the state
    assert nodes.view() == ScaleOut(NodeLabel(INTEL, "true"), 0)
    assert nodes.update("MODIFIED", "n0", {INTEL: "true"}) is True  # none -> some
    assert nodes.update("ADDED", "n1", {INTEL: "true"}) is False  # some -> more
    assert nodes.ready == 2
    assert nodes.update("MODIFIED", "n1", {}) is False
    assert nodes.update("DELETED", "n0", {INTEL: "true"}) is True  # some -> none
    assert nodes.ready == 0
    off = ScaleOutNodes(None)
    assert off.update("ADDED", "n0", {INTEL: "true"}) is False and off.view() is None


SAID = "0/4 nodes are available: 4 node(s) didn't match Pod's node affinity/selector."


def _scheduled(workers: dict[str, Any], ready: int | None, **gaudi_: Any) -> Any:
    body = JobView("j", "ns", "u", 1, {"image": "i", "workers": workers, "gaudi": gaudi_}, {})
    pods = [
        WorkerPod(
            f"j-worker-{i}", f"p{i}", owner_uid="u", index=i, generation=0, unschedulable=SAID
        )
        for i in range(workers["replicas"])
    ]
    label = NodeLabel(INTEL, "true")
    scale_out = None if ready is None else ScaleOut(label, ready)
    p = decide(replace(observe(body, pods, NOW), scale_out=scale_out))
    return next(c for c in p.status.conditions if c.type == "Scheduled")


def test_a_job_held_by_the_gate_says_so_and_how_to_fix_it() -> None:
    c = _scheduled({"replicas": 2}, ready=0)
    assert c.status == "False" and c.reason == gaudi.NO_SCALE_OUT_READY_NODE
    assert "2 of 2 workers cannot be placed" in c.message
    assert f"{INTEL}=true" in c.message and "network operator" in c.message
    assert "spec.gaudi.requireScaleOutReady: false" in c.message
    assert SAID in c.message  # the scheduler's own words stay


def test_other_placement_failures_keep_the_schedulers_reason() -> None:
    # Some node is ready: the gate is not what holds the job.
    assert _scheduled({"replicas": 2}, ready=3).reason == "NodeSelectorMismatch"
    # Not known yet, a single worker, or a job that opted out: no claim about the gate.
    assert _scheduled({"replicas": 2}, ready=None).reason == "NodeSelectorMismatch"
    assert _scheduled({"replicas": 1}, ready=0).reason == "NodeSelectorMismatch"
    opted_out = _scheduled({"replicas": 2}, ready=0, requireScaleOutReady=False)
    assert opted_out.reason == "NodeSelectorMismatch"


# --- the same numbers wherever they are written ----------------------------------------------


def test_the_operator_flags_default_to_the_contracts_values() -> None:
    import inspect

    from gaudi_operator.cli.operator_command import run_operator
    from gaudi_operator.runtime.config import OperatorConfig

    params = inspect.signature(run_operator).parameters
    assert params["hugepages_mi_per_hpu"].default == gaudi.HUGEPAGES_MI_PER_HPU
    assert params["scale_out_label"].default == api.SCALE_OUT_READY_LABEL
    cfg = OperatorConfig()
    assert cfg.hugepages_mi_per_hpu == gaudi.HUGEPAGES_MI_PER_HPU
    assert cfg.scale_out_label == api.SCALE_OUT_READY_LABEL
