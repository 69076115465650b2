"""Commit before act for the autoscaler: a resize is recorded (lastScale, cooldown and the
pending intent) before /scale; an operator killed in between finishes that very resize on
restart, once, instead of losing it or deciding it twice."""

from __future__ import annotations

from typing import Any

from cluster.autoscaling.support import (
    autoscaled_job,
    autoscaling_status,
    replicas,
    replicas_over,
    wait_reason,
)
from cluster.gtj import create_job, get_job, wait_running_workers
from conftest import wait_for


def test_crash_between_scale_intent_and_scale_finishes_the_resize_once(
    autoscaler: Any, cluster: Any, custom: Any, core: Any, namespace: str, load: Any, hpus_free: Any
) -> None:
    hpus_free()
    load.set_load("intent", namespace, 200)
    create_job(custom, namespace, autoscaled_job("intent", replicas=2, hpus=4, cooldownSeconds=600))
    wait_running_workers(core, namespace, "intent", 2, timeout=90)
    wait_reason(custom, namespace, "intent", "WithinTolerance")

    autoscaler.stop()
    autoscaler.env = {"GAUDI3_FAILPOINTS": "after-scale-intent"}
    try:
        autoscaler.start("--prometheus-url", cluster.prometheus_url)
        load.set_load("intent", namespace, 2000)  # asks for more: a scale-up 2 -> 4
        wait_for(lambda: autoscaler.proc.poll() is not None, timeout=60, what="the crash")
        pending = autoscaling_status(custom, namespace, "intent")["pendingResize"]
        assert (pending["from"], pending["to"]) == (2, 4)
        assert replicas(custom, namespace, "intent") == 2  # recorded, not applied
        recorded = get_job(custom, namespace, "intent")["status"]["lastScale"]
        assert (recorded["from"], recorded["to"]) == (2, 4)
    finally:
        autoscaler.env = {}
        if autoscaler.proc is None or autoscaler.proc.poll() is not None:
            autoscaler.start("--prometheus-url", cluster.prometheus_url)

    wait_for(lambda: replicas(custom, namespace, "intent") == 4, timeout=60, what="the resize")
    wait_for(
        lambda: "pendingResize" not in autoscaling_status(custom, namespace, "intent"),
        timeout=30,
        what="the intent cleared",
    )
    # The same resize, recorded once; the cooldown it started holds (no second resize).
    assert get_job(custom, namespace, "intent")["status"]["lastScale"] == recorded
    assert replicas_over(custom, namespace, "intent", 4) == {4}
