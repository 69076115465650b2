"""Intel's pod contract on a real API server (docs/gaudi.md): what admission refuses
(hpusPerWorker outside Intel's card groups, a template that sets the device plugin's
variables), and what the worker pods the operator creates carry (hostIPC, SYS_NICE, huge
pages sized as Intel does), and do not carry once a job turns them off."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cluster.gtj import job_body, wait_running_workers

pytestmark = pytest.mark.cluster


def refused(kubectl: Any, namespace: str, body: dict[str, Any]) -> str:
    """The API server's refusal of `body` (the test fails if it was accepted)."""
    out = kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)
    assert out.returncode != 0, f"{body['metadata']['name']} was accepted"
    assert kubectl("get", "gtj", "-n", namespace, "-o", "name").stdout.strip() == ""
    return out.stderr


@pytest.mark.parametrize("hpus", [3, 6])
def test_admission_refuses_a_card_count_intel_does_not_support(
    crd: Any, kubectl: Any, namespace: str, hpus: int
) -> None:
    err = refused(kubectl, namespace, job_body("odd", hpusPerWorker=hpus))
    assert "spec.hpusPerWorker: Invalid value:" in err, err
    assert "must be 1, 2, 4 or 8: Intel supports a whole node or a module group" in err, err


@pytest.mark.parametrize(
    ("kind", "name"),
    [("containers", "HABANA_VISIBLE_DEVICES"), ("initContainers", "HL_VISIBLE_DEVICES")],
)
def test_admission_refuses_a_template_that_sets_the_device_plugins_variables(
    crd: Any, kubectl: Any, namespace: str, kind: str, name: str
) -> None:
    env = [{"name": "HF_HOME", "value": "/data"}, {"name": name, "value": "0,1"}]
    template = {"spec": {kind: [{"name": "worker", "image": "busybox", "env": env}]}}
    err = refused(kubectl, namespace, job_body("visible", template=template))
    assert f"spec.template.spec.{kind}[0].env[1]: Forbidden:" in err, err
    assert "the Habana device plugin sets HABANA_VISIBLE_DEVICES" in err, err
    # The same template without it is fine: the rule is about those names only.
    ok = job_body("visible", template={"spec": {kind: [{"name": "worker", "env": env[:1]}]}})
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(ok))


def test_hpu_workers_carry_host_ipc_sys_nice_and_intels_huge_pages(
    operator: Any, core: Any, kubectl: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    body = job_body("contract", hpusPerWorker=2, workers={"replicas": 2})
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    for pod in wait_running_workers(core, namespace, "contract", 2):
        assert pod.spec.host_ipc is True
        (worker,) = pod.spec.containers
        assert worker.security_context.capabilities.add == ["SYS_NICE"]
        res = worker.resources
        assert res.requests["hugepages-2Mi"] == res.limits["hugepages-2Mi"] == "7248Mi"
        # The node's /dev/shm with hostIPC: no volume of the operator's hides it.
        assert "/dev/shm" not in [m.mount_path for m in worker.volume_mounts]
        assert not {e.name for e in worker.env or []} & {"HABANA_VISIBLE_DEVICES"}


def test_a_job_without_hccl_across_pods_turns_them_off(
    operator: Any, core: Any, kubectl: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    body = job_body("private", hpusPerWorker=1, gaudi={"hostIPC": False, "sysNice": False})
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    (pod,) = wait_running_workers(core, namespace, "private", 1)
    assert not pod.spec.host_ipc
    (worker,) = pod.spec.containers
    assert worker.security_context is None or worker.security_context.capabilities is None
    shm = next(v for v in pod.spec.volumes if v.name == "dshm")
    assert shm.empty_dir.medium == "Memory" and shm.empty_dir.size_limit == "8Gi"
    assert "/dev/shm" in [m.mount_path for m in worker.volume_mounts]
