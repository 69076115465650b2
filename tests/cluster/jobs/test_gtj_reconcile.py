"""The operator against the real local cluster: examples, scale, lifecycle, failures,
garbage collection, and a SIGKILL in the middle of creating a 16-worker job."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from kubernetes import watch

from chaos import complete_pod, fail_pod
from cluster.gtj import (
    EXAMPLES,
    GROUP,
    PLURAL,
    VERSION,
    create_job,
    events_for,
    get_job,
    job_body,
    load_example,
    wait_phase,
    wait_running_workers,
    worker_pods,
)
from conftest import wait_for

pytestmark = pytest.mark.cluster


def env_of(pod: Any) -> dict[str, str]:
    return {e.name: e.value for e in pod.spec.containers[0].env if e.value is not None}


def apply_example(kubectl: Any, ns: str, name: str) -> None:
    kubectl("apply", "-n", ns, "-f", str(EXAMPLES / name))


@pytest.mark.parametrize(
    ("example", "job", "workers", "hpus"),
    [("single-node-8hpu.yaml", "single-node", 1, 8), ("elastic-4-workers.yaml", "elastic", 4, 8)],
)
def test_example_yields_service_and_owned_workers_and_runs(
    operator: Any,
    core: Any,
    custom: Any,
    kubectl: Any,
    namespace: str,
    hpus_free: Any,
    example: str,
    job: str,
    workers: int,
    hpus: int,
) -> None:
    hpus_free()
    apply_example(kubectl, namespace, example)
    body = wait_phase(custom, namespace, job, "Running", timeout=90)
    uid = body["metadata"]["uid"]

    doc = load_example(example)[0]["spec"]
    w = doc["workers"]
    lo, hi = w.get("minReplicas", w["replicas"]), w.get("maxReplicas", w["replicas"])
    services = [s for s in core.list_namespaced_service(namespace).items if s.metadata.name == job]
    if hi > 1:
        (svc,) = services
        assert svc.spec.cluster_ip == "None"
        assert svc.metadata.owner_references[0].uid == uid
        endpoint = f"{job}-worker-0.{job}.{namespace}.svc:29400"
    else:  # one worker ever: no Service, the worker reaches itself at its own IP
        assert services == []
        endpoint = "$(GAUDI3_POD_IP):29400"

    pods = wait_running_workers(core, namespace, job, workers)
    assert [p.metadata.name for p in pods] == [f"{job}-worker-{i}" for i in range(workers)]
    for i, pod in enumerate(pods):
        ref = pod.metadata.owner_references[0]
        assert (ref.kind, ref.name, ref.uid, ref.controller) == ("GaudiTrainingJob", job, uid, True)
        res = pod.spec.containers[0].resources
        assert res.requests["habana.ai/gaudi"] == str(hpus) == res.limits["habana.ai/gaudi"]
        assert "hugepages-2Mi" in res.limits
        assert pod.spec.hostname == f"{job}-worker-{i}" and pod.spec.subdomain == job
        env = env_of(pod)
        assert env["PET_NNODES"] == f"{lo}:{hi}"
        assert env["PET_NPROC_PER_NODE"] == str(hpus)
        assert env["PET_RDZV_ENDPOINT"] == endpoint
        assert env["PET_RDZV_ID"] == f"{uid}-0"
        assert env["GAUDI3_WORKER_INDEX"] == str(i)
        assert pod.spec.node_name and pod.spec.node_name.startswith("gaudi3-node-")
        # Intel's pod contract (docs/gaudi.md): the node's IPC namespace and /dev/shm.
        assert pod.spec.host_ipc is True
        assert pod.spec.containers[0].security_context.capabilities.add == ["SYS_NICE"]
        assert "dshm" not in [v.name for v in pod.spec.volumes]

    def columns() -> list[str] | None:
        row = kubectl("get", "gtj", job, "-n", namespace, "--no-headers").stdout.split()
        return (
            row
            if row[1:5] == ["Running", f"{workers}/{workers}", str(workers * hpus), "0"]
            else None
        )

    wait_for(columns, timeout=30, what="printer columns")
    header = kubectl("get", "gtj", job, "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "WORKERS", "HPUS", "RESTARTS", "AGE"]
    status = get_job(custom, namespace, job)["status"]
    assert status["observedGeneration"] == body["metadata"]["generation"]
    assert status["readyReplicas"] == workers and status["startTime"]
    kubectl("delete", "gtj", job, "-n", namespace, "--wait=false")


def test_kubectl_scale_changes_workers_and_scale_subresource_reads_right(
    operator: Any, core: Any, custom: Any, kubectl: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    apply_example(kubectl, namespace, "elastic-4-workers.yaml")
    wait_running_workers(core, namespace, "elastic", 4, timeout=90)
    kubectl("scale", "gtj/elastic", "-n", namespace, "--replicas=2")
    wait_for(
        lambda: (
            [p.metadata.name for p in worker_pods(core, namespace, "elastic")]
            == ["elastic-worker-0", "elastic-worker-1"]
        ),
        timeout=60,
        what="scale-down to workers 0 and 1",
    )
    wait_phase(custom, namespace, "elastic", "Running")
    raw = kubectl(
        "get", "--raw", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/elastic/scale"
    ).stdout
    scale = json.loads(raw)
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 2
    assert scale["status"]["replicas"] == 2
    assert scale["status"]["selector"] == "gaudi.scalestarter.dev/job-name=elastic"
    # A world of 3 x 8 HPUs would silently change the global batch (1024): refused.
    out = kubectl("scale", "gtj/elastic", "-n", namespace, "--replicas=3", check=False)
    assert out.returncode != 0 and "spec.batch.globalBatchSize" in out.stderr
    kubectl("scale", "gtj/elastic", "-n", namespace, "--replicas=4")
    wait_running_workers(core, namespace, "elastic", 4, timeout=60)
    events = [e.reason for e in events_for(core, namespace, "elastic")]
    assert "CreatedWorkers" in events and "DeletedWorkers" in events


def test_unusable_object_gets_condition_and_event_while_others_keep_working(
    operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    # Valid for the CRD (its schema has no name pattern), refused by the API server as a pod.
    bad = job_body(
        "bad-volume",
        hpusPerWorker=1,
        template={"spec": {"volumes": [{"name": "Not_A_DNS_Label", "emptyDir": {}}]}},
    )
    create_job(custom, namespace, bad)
    create_job(custom, namespace, job_body("good", hpusPerWorker=1, workers={"replicas": 2}))

    def invalid() -> dict[str, Any] | None:
        conds = (get_job(custom, namespace, "bad-volume").get("status") or {}).get(
            "conditions"
        ) or []
        return next(
            (c for c in conds if c["type"] == "InvalidSpec" and c["status"] == "True"), None
        )

    cond = wait_for(invalid, timeout=60, what="InvalidSpec on bad-volume")
    assert "spec.volumes" in cond["message"] and "Not_A_DNS_Label" in cond["message"]
    warnings = [e for e in events_for(core, namespace, "bad-volume") if e.type == "Warning"]
    assert any(e.reason == "InvalidSpec" and "spec.volumes" in e.message for e in warnings)
    assert worker_pods(core, namespace, "bad-volume") == []
    wait_phase(custom, namespace, "good", "Running", timeout=60)
    assert operator.proc.poll() is None


def test_suspend_deletes_workers_and_resume_recreates_them(
    operator: Any, core: Any, custom: Any, kubectl: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    create_job(custom, namespace, job_body("pausable", hpusPerWorker=2, workers={"replicas": 3}))
    wait_running_workers(core, namespace, "pausable", 3)
    kubectl(
        "patch",
        "gtj",
        "pausable",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"suspend":true}}',
    )
    job = wait_phase(custom, namespace, "pausable", "Suspended")
    wait_for(
        lambda: worker_pods(core, namespace, "pausable") == [], timeout=60, what="workers deleted"
    )
    assert get_job(custom, namespace, "pausable")["metadata"]["uid"] == job["metadata"]["uid"]
    kubectl(
        "patch",
        "gtj",
        "pausable",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"suspend":false}}',
    )
    wait_running_workers(core, namespace, "pausable", 3)
    wait_phase(custom, namespace, "pausable", "Running")
    reasons = [e.reason for e in events_for(core, namespace, "pausable")]
    assert "Suspended" in reasons and "Resumed" in reasons


def test_active_deadline_fails_the_job(
    operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    create_job(
        custom,
        namespace,
        job_body("hurry", hpusPerWorker=1, runPolicy={"activeDeadlineSeconds": 4}),
    )
    job = wait_phase(custom, namespace, "hurry", "Failed", timeout=60)
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DeadlineExceeded"
    wait_for(lambda: worker_pods(core, namespace, "hurry") == [], timeout=60, what="cleanup")


def test_all_workers_succeeding_makes_the_job_succeeded_and_ttl_deletes_it(
    operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    body = job_body(
        "done",
        hpusPerWorker=1,
        workers={"replicas": 2},
        runPolicy={"ttlSecondsAfterFinished": 5, "cleanPodPolicy": "None"},
    )
    create_job(custom, namespace, body)
    for pod in wait_running_workers(core, namespace, "done", 2):
        complete_pod(core, namespace, pod.metadata.name)
    job = wait_phase(custom, namespace, "done", "Succeeded", timeout=60)
    assert job["status"]["completionTime"]
    assert [p.status.phase for p in worker_pods(core, namespace, "done")] == ["Succeeded"] * 2

    def gone() -> bool:
        names = [
            j["metadata"]["name"]
            for j in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)[
                "items"
            ]
        ]
        return "done" not in names

    wait_for(gone, timeout=60, what="TTL deletion")
    wait_for(lambda: worker_pods(core, namespace, "done") == [], timeout=60, what="pods GC")


def test_a_failing_worker_fails_the_job_with_pod_node_and_exit_code(
    operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    # With failover in place a failure restarts by default; exit code 42 is declared fatal.
    policy = {"rules": [{"exitCodes": [42], "action": "Fail"}]}
    body = job_body("crash", hpusPerWorker=1, workers={"replicas": 3}, failurePolicy=policy)
    create_job(custom, namespace, body)
    pods = wait_running_workers(core, namespace, "crash", 3)
    victim = pods[1]
    fail_pod(core, namespace, victim.metadata.name, exit_code=42)
    job = wait_phase(custom, namespace, "crash", "Failed", timeout=60)
    last = job["status"]["lastFailure"]
    assert last["pod"] == "crash-worker-1"
    assert last["node"] == victim.spec.node_name
    assert last["exitCode"] == 42
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and "crash-worker-1" in failed["message"]
    warnings = [e for e in events_for(core, namespace, "crash") if e.type == "Warning"]
    assert any("crash-worker-1" in e.message and "42" in e.message for e in warnings)


def test_deleting_a_job_removes_all_its_children(
    operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    create_job(custom, namespace, job_body("ephemeral", hpusPerWorker=1, workers={"replicas": 3}))
    wait_running_workers(core, namespace, "ephemeral", 3)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "ephemeral")
    wait_for(lambda: worker_pods(core, namespace, "ephemeral") == [], timeout=60, what="pods GC")

    def no_service() -> bool:
        return not [
            s
            for s in core.list_namespaced_service(namespace).items
            if s.metadata.name == "ephemeral"
        ]

    wait_for(no_service, timeout=60, what="service GC")


def test_operator_sigkilled_while_creating_16_workers_converges_to_exactly_16(
    operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    # One create request at a time, so the kill lands in the middle of the creation.
    operator.restart("--pod-concurrency", "1")
    seen: list[int] = []
    first_pod = threading.Event()

    def watch_pods() -> None:
        w = watch.Watch()
        for _ in w.stream(core.list_namespaced_pod, namespace, timeout_seconds=60):
            first_pod.set()
            w.stop()

    watcher = threading.Thread(target=watch_pods, daemon=True)
    watcher.start()
    time.sleep(0.3)
    create_job(custom, namespace, job_body("big", hpusPerWorker=2, workers={"replicas": 16}))
    assert first_pod.wait(60), "no worker was created"
    operator.kill()
    seen.append(len(worker_pods(core, namespace, "big")))
    assert 0 < seen[0] < 16, f"the kill did not land mid-creation ({seen[0]} pods)"
    operator.start()

    def converged() -> list[Any] | None:
        pods = worker_pods(core, namespace, "big")
        return pods if len(pods) == 16 else None

    pods = wait_for(converged, timeout=90, what="16 workers")
    time.sleep(3)  # and it stays at 16: no late duplicates
    pods = worker_pods(core, namespace, "big")
    uid = get_job(custom, namespace, "big")["metadata"]["uid"]
    assert sorted(p.metadata.name for p in pods) == sorted(f"big-worker-{i}" for i in range(16))
    assert all(p.metadata.owner_references[0].uid == uid for p in pods)
    every = core.list_namespaced_pod(namespace).items
    assert len(every) == 16, "orphan or duplicate pods"
    wait_phase(custom, namespace, "big", "Running", timeout=90)
    print(f"killed the operator with {seen[0]}/16 workers created; converged to 16")


def test_operator_exports_its_metrics(
    operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    create_job(custom, namespace, job_body("counted", hpusPerWorker=1, workers={"replicas": 2}))
    wait_phase(custom, namespace, "counted", "Running")

    def running_counted() -> str | None:
        text = operator.metrics()
        return text if 'gaudi_operator_jobs{phase="Running"}' in text else None

    text = wait_for(running_counted, timeout=30, what="gaudi_operator_jobs metric")
    running = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('gaudi_operator_jobs{phase="Running"}')
    )
    assert running >= 1
    assert "gaudi_operator_pods_created_total" in text
    assert "gaudi_operator_pods_deleted_total" in text or "gaudi_operator_pods_deleted" in text
    assert "gaudi_operator_reconcile_duration_seconds_bucket" in text
    assert "gaudi_operator_reconcile_errors" in text


POD_GROUP_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "podgroups.scheduling.x-k8s.io"},
    "spec": {
        "group": "scheduling.x-k8s.io",
        "scope": "Namespaced",
        "names": {"kind": "PodGroup", "plural": "podgroups", "singular": "podgroup"},
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def test_gang_scheduling_creates_a_pod_group_for_scheduler_plugins(
    operator: Any, core: Any, custom: Any, kubectl: Any, namespace: str
) -> None:
    # A stand-in for scheduler-plugins' CRD: only the API matters to the operator.
    kubectl("apply", "-f", "-", input=json.dumps(POD_GROUP_CRD))
    kubectl("wait", "--for=condition=Established", "crd/podgroups.scheduling.x-k8s.io")
    body = job_body(
        "gang",
        hpusPerWorker=1,
        workers={"replicas": 3, "minReplicas": 2, "maxReplicas": 3},
        scheduling={"gang": True, "schedulerName": "scheduler-plugins-scheduler"},
    )
    create_job(custom, namespace, body)

    def group() -> dict[str, Any] | None:
        items = custom.list_namespaced_custom_object(
            "scheduling.x-k8s.io", "v1alpha1", namespace, "podgroups"
        )["items"]
        return items[0] if items else None

    pg = wait_for(group, timeout=30, what="PodGroup")
    assert pg["metadata"]["name"] == "gang"
    assert pg["spec"]["minMember"] == 2
    assert pg["metadata"]["ownerReferences"][0]["name"] == "gang"
    pods = wait_for(
        lambda: (
            len(worker_pods(core, namespace, "gang")) == 3 and worker_pods(core, namespace, "gang")
        ),
        timeout=30,
        what="3 workers",
    )
    for pod in pods:
        assert pod.metadata.labels["scheduling.x-k8s.io/pod-group"] == "gang"
        assert pod.spec.scheduler_name == "scheduler-plugins-scheduler"
