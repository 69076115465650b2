"""A one-worker job has no headless Service (one write less, issue 21): its pod's
rendezvous endpoint and master address are `$(GAUDI3_POD_IP)`, which the kubelet expands to
the pod's own IP. The real launcher trains with exactly that environment."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from gaudi_operator.api import GaudiTrainingJobSpec
from gaudi_operator.jobs import manifests

pytestmark = pytest.mark.training

POD_IP = "127.0.77.1"  # a loopback address of its own: nothing else listens on 29400 there


def kubelet_env(container: dict, pod_ip: str) -> dict[str, str]:
    """The container's environment as the kubelet makes it: downward API values filled in,
    `$(VAR)` expanded from the variables defined before it."""
    env: dict[str, str] = {}
    for e in container["env"]:
        if "valueFrom" in e:
            field = e["valueFrom"]["fieldRef"]["fieldPath"]
            env[e["name"]] = pod_ip if field == "status.podIP" else "node-1"
            continue
        env[e["name"]] = re.sub(
            r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"]
        )
    return env


def test_a_one_worker_job_trains_without_a_service(
    launch: Callable[..., object], job_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    spec = GaudiTrainingJobSpec.model_validate({"image": "img", "hpusPerWorker": 2})
    assert not manifests.needs_service(spec)
    pod = manifests.worker_pod_manifest(spec, manifests.JobRef("solo", "team", "uid-1"), 0, 0)
    env = kubelet_env(pod["spec"]["containers"][0], POD_IP)
    assert env["PET_RDZV_ENDPOINT"] == f"{POD_IP}:29400" and env["MASTER_ADDR"] == POD_IP
    env["GAUDI3_CHECKPOINT_DIR"] = str(tmp_path / "ckpt")
    env["GAUDI3_METRICS_PORT"] = "off"
    run = launch("--max-steps", "20", "--log-every", "10", env=job_env(**env))
    assert run.wait() == 0, run.tail()  # type: ignore[attr-defined]
    assert [s for s, _ in run.steps()] == [10, 20]  # type: ignore[attr-defined]
    text = run.text()  # type: ignore[attr-defined]
    # The rendezvous of the pod path, its store on the pod's IP: no DNS name was needed.
    assert f"--rdzv-endpoint {POD_IP}:29400" in text
    assert f"is_host=1,bind_addr={POD_IP}" in text
