"""The autoscaler's guards on the real cluster: it scales only into room that exists, rolls
back a scale-up whose workers cannot be placed or that lowers per-worker throughput, and
holds the size while Prometheus is away."""

from __future__ import annotations

from typing import Any

from cluster.autoscaling.support import (
    autoscaled_job,
    autoscaling_status,
    condition,
    last_scale,
    replicas,
    replicas_over,
    wait_reason,
)
from cluster.gtj import create_job, events_for, get_job, wait_event, wait_running_workers
from conftest import wait_for


def blocker(core: Any, ns: str, node: str) -> None:
    """A pod that takes all 8 HPUs of `node` (not one of the operator's)."""
    core.create_namespaced_pod(
        ns,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"blocker-{node}"},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "tolerations": [{"key": "habana.ai/gaudi", "operator": "Exists"}],
                "containers": [
                    {
                        "name": "c",
                        "image": "busybox",
                        "resources": {"limits": {"habana.ai/gaudi": "8"}},
                    }
                ],
            },
        },
    )


def test_scale_up_asks_only_for_what_fits_on_two_free_nodes(
    autoscaler: Any, custom: Any, core: Any, namespace: str, load: Any, hpus_free: Any
) -> None:
    hpus_free()
    for node in ("gaudi3-node-0", "gaudi3-node-1"):
        blocker(core, namespace, node)
    wait_for(
        lambda: all(p.status.phase == "Running" for p in core.list_namespaced_pod(namespace).items),
        timeout=60,
        what="blockers Running",
    )
    # Two free nodes of 8 HPUs; worker-0 takes one, so one more 8-HPU worker fits.
    load.set_load("fit", namespace, 100)
    create_job(
        custom,
        namespace,
        autoscaled_job(
            "fit", replicas=1, hpus=8, scaleUp={"stabilizationSeconds": 0, "maxStep": 4}
        ),
    )
    wait_running_workers(core, namespace, "fit", 1, timeout=90)
    wait_reason(custom, namespace, "fit", "WithinTolerance")
    load.set_load("fit", namespace, 800)  # asks for 8; maxStep allows 5
    wait_for(lambda: replicas(custom, namespace, "fit") != 1, timeout=30, what="a resize")
    assert replicas_over(custom, namespace, "fit", 4) == {2}
    last = last_scale(custom, namespace, "fit", 2)
    assert (last["from"], last["to"]) == (1, 2)
    wait_running_workers(core, namespace, "fit", 2, timeout=60)
    wait_reason(custom, namespace, "fit", "InsufficientCapacity", timeout=30)
    msg = autoscaling_status(custom, namespace, "fit")["lastDecision"]["message"]
    assert "free HPUs fit 0 more" in msg and "gaudi3-node-0" in msg
    wait_event(core, namespace, "fit", "InsufficientCapacity")


def test_unschedulable_scale_up_is_rolled_back_after_pending_timeout(
    autoscaler: Any, custom: Any, core: Any, namespace: str, load: Any, hpus_free: Any
) -> None:
    hpus_free()
    # 40Gi of huge pages per worker: one worker per node (64Gi), though the HPUs (4 per
    # worker, 8 per node) would fit two. The capacity check counts HPUs only, so it lets
    # the scale-up through; the pending timeout is the guard that catches it.
    pages = {"hugepages-2Mi": "40Gi"}
    load.set_load("pend", namespace, 100)
    create_job(
        custom,
        namespace,
        autoscaled_job(
            "pend",
            replicas=1,
            hpus=4,
            pendingTimeoutSeconds=6,
            scaleUp={"stabilizationSeconds": 0, "maxStep": 4},
            spec={"resources": {"requests": pages, "limits": pages}},
        ),
    )
    wait_running_workers(core, namespace, "pend", 1, timeout=90)
    wait_reason(custom, namespace, "pend", "WithinTolerance")
    load.set_load("pend", namespace, 500)  # asks for 5; 4 nodes hold 4
    wait_for(lambda: replicas(custom, namespace, "pend") == 5, timeout=30, what="scale-up to 5")
    wait_for(lambda: replicas(custom, namespace, "pend") == 1, timeout=60, what="the rollback")
    last = last_scale(custom, namespace, "pend", 1)
    job = get_job(custom, namespace, "pend")
    assert (last["from"], last["to"], last["reason"]) == (5, 1, "PendingTimeout")
    ceiling = job["status"]["autoscaling"]["ceiling"]
    assert ceiling["replicas"] == 1 and ceiling["reason"] == "PendingTimeout"
    warning = wait_event(core, namespace, "pend", "PendingTimeout")
    assert warning[0].type == "Warning" and "Pending" in warning[0].message
    # The load still asks for 5; the held ceiling keeps the job at 1.
    wait_reason(custom, namespace, "pend", "CeilingHeld", timeout=20)
    assert replicas_over(custom, namespace, "pend", 3) == {1}


def test_per_worker_throughput_drop_rolls_the_scale_up_back(
    autoscaler: Any, custom: Any, core: Any, namespace: str, load: Any, hpus_free: Any
) -> None:
    hpus_free()
    load.set_load("eff", namespace, 200)
    load.set_throughput("eff", namespace, [25.0] * 8)  # 2 workers x 4 ranks: 100/worker
    create_job(
        custom,
        namespace,
        autoscaled_job(
            "eff",
            replicas=2,
            hpus=4,
            minEfficiency=0.7,
            scaleUp={"stabilizationSeconds": 4, "maxStep": 2},
        ),
    )
    wait_running_workers(core, namespace, "eff", 2, timeout=90)
    wait_reason(custom, namespace, "eff", "WithinTolerance")
    load.set_load("eff", namespace, 1000)
    wait_for(lambda: replicas(custom, namespace, "eff") == 4, timeout=40, what="scale-up to 4")
    load.set_throughput("eff", namespace, [15.0] * 16)  # 240 over 4 workers: 60/worker
    wait_for(lambda: replicas(custom, namespace, "eff") == 2, timeout=40, what="the rollback")
    last = last_scale(custom, namespace, "eff", 2)
    job = get_job(custom, namespace, "eff")
    assert (last["from"], last["to"], last["reason"]) == (4, 2, "EfficiencyBelowMinimum")
    ceiling = job["status"]["autoscaling"]["ceiling"]
    assert ceiling["replicas"] == 2 and ceiling["reason"] == "EfficiencyBelowMinimum"
    assert "60%" in ceiling["message"]
    wait_reason(custom, namespace, "eff", "CeilingHeld", timeout=20)


def test_prometheus_stopped_holds_size_and_restarted_resumes(
    autoscaler: Any,
    cluster: Any,
    custom: Any,
    core: Any,
    namespace: str,
    load: Any,
    hpus_free: Any,
) -> None:
    hpus_free()
    load.set_load("prom", namespace, 200)
    create_job(custom, namespace, autoscaled_job("prom", replicas=2, hpus=4))
    wait_running_workers(core, namespace, "prom", 2, timeout=90)
    wait_reason(custom, namespace, "prom", "WithinTolerance")
    cluster.stop_prometheus()
    try:
        load.set_load("prom", namespace, 1000)  # nobody can see it
        wait_for(
            lambda: (
                (condition(custom, namespace, "prom", "MetricsUnavailable") or {}).get("status")
                == "True"
            ),
            timeout=20,
            what="MetricsUnavailable",
        )
        cond = condition(custom, namespace, "prom", "MetricsUnavailable")
        assert cond is not None and "cannot reach Prometheus" in cond["message"]
        assert replicas_over(custom, namespace, "prom", 5) == {2}
        # Recorded once, when the metric was lost: the count of failures since is memory.
        assert autoscaling_status(custom, namespace, "prom")["queryFailures"] >= 1
    finally:
        cluster.start_prometheus()
    wait_for(lambda: replicas(custom, namespace, "prom") == 4, timeout=90, what="scaling to resume")
    wait_for(
        lambda: (
            (condition(custom, namespace, "prom", "MetricsUnavailable") or {}).get("status")
            == "False"
        ),
        timeout=20,
        what="MetricsUnavailable cleared",
    )
    wanted = {"MetricsUnavailable", "MetricsRecovered", "MetricAboveTarget"}
    wait_for(
        lambda: wanted <= {e.reason for e in events_for(core, namespace, "prom")},
        timeout=15,
        what=f"events {sorted(wanted)}",
    )
