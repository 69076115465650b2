"""The built-in autoscaler against the real control plane and a real Prometheus scraping a
test exporter: steps, tolerance, the scale-down window, cooldown, batch-valid sizes, and
`kubectl scale` adopted instead of fought."""

from __future__ import annotations

import time
from typing import Any

from cluster.autoscaling.support import (
    autoscaled_job,
    last_reason,
    last_scale,
    replicas,
    replicas_over,
    wait_reason,
)
from cluster.gtj import create_job, events_for, get_job, wait_running_workers
from conftest import wait_for

UP = 'gaudi_operator_autoscale_decisions_total{direction="up",reason="MetricAboveTarget"}'


def counter(text: str, series: str) -> float:
    """The value of one series in the operator's /metrics text (0 while it is absent)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def start(
    custom: Any, core: Any, ns: str, load: Any, name: str, value: float, n: int, **kw: Any
) -> None:
    load.set_load(name, ns, value)
    create_job(custom, ns, autoscaled_job(name, replicas=n, **kw))
    wait_running_workers(core, ns, name, n, timeout=90)


def test_high_load_scales_up_by_at_most_max_step_then_holds_in_cooldown(
    autoscaler: Any, custom: Any, core: Any, namespace: str, load: Any, hpus_free: Any
) -> None:
    hpus_free()
    start(custom, core, namespace, load, "up", 200, 2, hpus=4, cooldownSeconds=600)
    wait_reason(custom, namespace, "up", "WithinTolerance")
    # The module may share its operator with other autoscaling modules: count from here.
    ups = counter(autoscaler.metrics(), UP)
    load.set_load("up", namespace, 2000)  # asks for 20 workers
    wait_for(lambda: replicas(custom, namespace, "up") != 2, timeout=30, what="a resize")
    last = last_scale(custom, namespace, "up", 4)
    assert (last["from"], last["to"], last["reason"]) == (2, 4, "MetricAboveTarget")
    assert last["value"] == 2000
    # No second resize inside the cooldown, though the metric still asks for more.
    assert replicas_over(custom, namespace, "up", 6) == {4}
    wait_reason(custom, namespace, "up", "Cooldown")
    assert any(e.reason == "MetricAboveTarget" for e in events_for(core, namespace, "up"))
    text = autoscaler.metrics()
    assert counter(text, UP) >= ups + 1, text
    assert "gaudi_operator_autoscale_desired_replicas" in text


def test_value_within_tolerance_changes_nothing(
    autoscaler: Any, custom: Any, core: Any, namespace: str, load: Any, hpus_free: Any
) -> None:
    hpus_free()
    start(custom, core, namespace, load, "steady", 216, 2, hpus=4)  # 108 per worker, tol 0.1
    wait_reason(custom, namespace, "steady", "WithinTolerance")
    assert replicas_over(custom, namespace, "steady", 5) == {2}
    assert last_reason(custom, namespace, "steady") == "WithinTolerance"
    assert "lastScale" not in get_job(custom, namespace, "steady")["status"]


def test_low_load_scales_down_only_after_its_stabilization_window(
    autoscaler: Any, custom: Any, core: Any, namespace: str, load: Any, hpus_free: Any
) -> None:
    hpus_free()
    # Without the window the loop (1 s) scales down a second or two after the drop.
    window = 6
    start(
        custom,
        core,
        namespace,
        load,
        "down",
        300,
        3,
        hpus=4,
        scaleDown={"stabilizationSeconds": window, "maxStep": 1},
    )
    wait_reason(custom, namespace, "down", "WithinTolerance", timeout=90)
    t0 = time.monotonic()
    load.set_load("down", namespace, 100)  # asks for 1 worker
    wait_reason(custom, namespace, "down", "Stabilizing")
    wait_for(lambda: replicas(custom, namespace, "down") != 3, timeout=60, what="scale-down")
    waited = time.monotonic() - t0
    assert waited >= window - 0.5, f"scaled down after {waited:.1f}s, window is {window}s"
    last = last_scale(custom, namespace, "down", 2)
    assert (last["from"], last["to"], last["reason"]) == (3, 2, "MetricBelowTarget")


def test_only_world_sizes_that_keep_the_global_batch_are_chosen(
    autoscaler: Any, custom: Any, core: Any, namespace: str, load: Any, hpus_free: Any
) -> None:
    hpus_free()
    # 96 = 8 x world x accumulation: with 2 HPUs per worker, 1, 2, 3 or 6 workers.
    batch = {"globalBatchSize": 96, "microBatchSize": 8}
    start(
        custom,
        core,
        namespace,
        load,
        "batch",
        200,
        2,
        hpus=2,
        scaleUp={"stabilizationSeconds": 0, "maxStep": 4},
        spec={"batch": batch},
    )
    wait_reason(custom, namespace, "batch", "WithinTolerance")
    load.set_load("batch", namespace, 500)  # asks for 5: not valid, 6 is
    wait_for(lambda: replicas(custom, namespace, "batch") != 2, timeout=30, what="a resize")
    seen = replicas_over(custom, namespace, "batch", 3)
    assert seen == {6}
    job = get_job(custom, namespace, "batch")
    assert last_scale(custom, namespace, "batch", 6)["from"] == 2
    assert job["spec"]["batch"] == batch
    assert "globalBatchSize" in job["status"]["autoscaling"]["lastDecision"]["message"] or (
        last_reason(custom, namespace, "batch") != "MetricAboveTarget"
    )


def test_kubectl_scale_is_adopted_not_fought(
    autoscaler: Any,
    custom: Any,
    core: Any,
    namespace: str,
    load: Any,
    kubectl: Any,
    hpus_free: Any,
) -> None:
    hpus_free()
    start(custom, core, namespace, load, "manual", 200, 2, hpus=4, cooldownSeconds=30)
    wait_reason(custom, namespace, "manual", "WithinTolerance")
    kubectl("scale", "gtj/manual", "--replicas=3", "-n", namespace)
    wait_for(
        lambda: last_reason(custom, namespace, "manual") in ("ManualScale", "Cooldown"),
        timeout=20,
        what="the manual resize adopted",
    )
    # The metric now asks for 2, but the cooldown that the manual resize started holds 3.
    assert replicas_over(custom, namespace, "manual", 6) == {3}
    assert any(e.reason == "ManualScale" for e in events_for(core, namespace, "manual"))
    assert get_job(custom, namespace, "manual")["status"]["autoscaling"]["appliedReplicas"] == 3


def test_stabilization_window_survives_an_operator_restart(
    autoscaler: Any,
    cluster: Any,
    custom: Any,
    core: Any,
    namespace: str,
    load: Any,
    hpus_free: Any,
) -> None:
    hpus_free()
    window = 10
    start(
        custom,
        core,
        namespace,
        load,
        "restart",
        300,
        3,
        hpus=4,
        scaleDown={"stabilizationSeconds": window, "maxStep": 1},
    )
    wait_reason(custom, namespace, "restart", "WithinTolerance", timeout=90)
    t0 = time.monotonic()
    load.set_load("restart", namespace, 100)
    wait_reason(custom, namespace, "restart", "Stabilizing")
    time.sleep(3)  # well into the window
    autoscaler.restart("--prometheus-url", cluster.prometheus_url)
    restarted = time.monotonic() - t0
    wait_for(lambda: replicas(custom, namespace, "restart") != 3, timeout=60, what="scale-down")
    waited = time.monotonic() - t0
    # The window counts from the first low reading, kept in status across the restart;
    # a loop that lost it would wait a whole window after the restart.
    assert window - 0.5 <= waited < restarted + window - 1, (waited, restarted)
