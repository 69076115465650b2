"""/scale is the one knob: an autoscaling/v2 HPA resolves it, and the built-in loop refuses
to drive a job that an external autoscaler also drives."""

from __future__ import annotations

import json
from typing import Any

from cluster.autoscaling.support import (
    autoscaled_job,
    condition,
    exporter,
    replicas,
    replicas_over,
    wait_reason,
)
from cluster.gtj import (
    GROUP,
    PLURAL,
    VERSION,
    create_job,
    job_body,
    wait_event,
    wait_running_workers,
)
from conftest import wait_for


def hpa(name: str, job: str) -> dict[str, Any]:
    # An External metric: the HPA needs a metrics adapter (prometheus-adapter, KEDA) to
    # read it. This cluster has none, so the HPA reads /scale but never changes it.
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "GaudiTrainingJob",
                "name": job,
            },
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {"name": "gaudi3_bench_load"},
                        "target": {"type": "AverageValue", "averageValue": "100"},
                    },
                }
            ],
        },
    }


def hpa_status(kubectl: Any, ns: str, name: str) -> dict[str, Any]:
    return (
        json.loads(kubectl("get", "hpa", name, "-n", ns, "-o", "json").stdout).get("status") or {}
    )


def test_hpa_resolves_the_jobs_scale_subresource(
    autoscaler: Any, custom: Any, core: Any, namespace: str, kubectl: Any, hpus_free: Any
) -> None:
    hpus_free()
    create_job(
        custom,
        namespace,
        job_body(
            "viahpa", hpusPerWorker=4, workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 4}
        ),
    )
    wait_running_workers(core, namespace, "viahpa", 2, timeout=90)
    scale = json.loads(
        kubectl(
            "get", "--raw", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/viahpa/scale"
        ).stdout
    )
    assert scale["spec"]["replicas"] == 2 and scale["status"]["replicas"] == 2
    assert scale["status"]["selector"] == "gaudi.scalestarter.dev/job-name=viahpa"
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(hpa("viahpa", "viahpa")))

    def resolved() -> bool:
        st = hpa_status(kubectl, namespace, "viahpa")
        able = [c for c in st.get("conditions") or [] if c["type"] == "AbleToScale"]
        return bool(able) and able[0]["status"] == "True" and st.get("currentReplicas") == 2

    # kube-controller-manager syncs HPAs every 15 s.
    wait_for(resolved, timeout=90, interval=1, what="the HPA reading /scale")
    able = next(
        c
        for c in hpa_status(kubectl, namespace, "viahpa")["conditions"]
        if c["type"] == "AbleToScale"
    )
    assert able["reason"] == "SucceededGetScale"
    # autoscaling.enabled is false: no conflict, the operator leaves the HPA alone.
    assert condition(custom, namespace, "viahpa", "AutoscalingConflict") is None


def test_built_in_loop_refuses_a_job_an_hpa_also_drives(
    autoscaler: Any,
    cluster: Any,
    custom: Any,
    core: Any,
    namespace: str,
    kubectl: Any,
    hpus_free: Any,
) -> None:
    hpus_free()
    with exporter(cluster, namespace) as load:
        load.set_load("both", namespace, 200)
        create_job(custom, namespace, autoscaled_job("both", replicas=2, hpus=4))
        wait_running_workers(core, namespace, "both", 2, timeout=90)
        wait_reason(custom, namespace, "both", "WithinTolerance")
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(hpa("both-hpa", "both")))
        wait_for(
            lambda: (
                (condition(custom, namespace, "both", "AutoscalingConflict") or {}).get("status")
                == "True"
            ),
            timeout=20,
            what="AutoscalingConflict",
        )
        cond = condition(custom, namespace, "both", "AutoscalingConflict")
        assert cond is not None and "HorizontalPodAutoscaler both-hpa" in cond["message"]
        events = wait_event(core, namespace, "both", "AutoscalingConflict")
        assert events[0].type == "Warning"
        load.set_load("both", namespace, 1000)  # the built-in loop would scale up: it must not
        assert replicas_over(custom, namespace, "both", 5) == {2}
        kubectl("delete", "hpa", "both-hpa", "-n", namespace)
        wait_for(
            lambda: replicas(custom, namespace, "both") == 4,
            timeout=30,
            what="the built-in loop to take over again",
        )
        # Level-based: cleared on the next pass even if a concurrent status write raced it.
        wait_for(
            lambda: (
                (condition(custom, namespace, "both", "AutoscalingConflict") or {}).get("status")
                == "False"
            ),
            timeout=20,
            what="AutoscalingConflict cleared",
        )


def test_external_autoscaler_annotation_also_stops_the_built_in_loop(
    autoscaler: Any, cluster: Any, custom: Any, core: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    with exporter(cluster, namespace) as load:
        load.set_load("keda", namespace, 1000)
        body = autoscaled_job("keda", replicas=1, hpus=4)
        body["metadata"]["annotations"] = {"gaudi.scalestarter.dev/external-autoscaler": "keda"}
        create_job(custom, namespace, body)
        wait_for(
            lambda: (
                (condition(custom, namespace, "keda", "AutoscalingConflict") or {}).get("status")
                == "True"
            ),
            timeout=30,
            what="AutoscalingConflict",
        )
        assert replicas_over(custom, namespace, "keda", 3) == {1}
