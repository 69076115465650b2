"""A local cluster of its own (300 Gaudi nodes): every node Ready with its capacity and
its own address; the supervisor brings back a SIGKILLed scheduler and API server, the
cluster schedules pods again, `gaudi3 cluster status` counts the restarts, a killed
supervisor is replaced by `up` without restarting anything, and `down` leaves no
process behind. The tests run in file order on the one cluster."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from typer.testing import CliRunner
from urllib3.exceptions import HTTPError

from conftest import wait_for
from gaudi_devtools.cluster import Cluster
from gaudi_devtools.cluster.cluster import COMPONENTS, Settings
from gaudi_devtools.cluster.nodes import POOL_LABEL
from gaudi_devtools.cluster.processes import is_zombie
from gaudi_devtools.cluster_cli import cluster_app

NODES = 300


@pytest.fixture(scope="module")
def own() -> Iterator[Cluster]:
    c = Cluster(f"pytest-{os.getpid()}-ops", say=lambda m: print(f"[ops cluster] {m}", flush=True))
    c.up(Settings(gaudi_nodes=NODES, hpus_per_node=8))
    try:
        yield c
    finally:
        c.delete()


@pytest.fixture(scope="module")
def own_core(own: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=str(own.kubeconfig)))


def _pod(name: str) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="worker",
                    image="gaudi-train:test",
                    resources=client.V1ResourceRequirements(
                        requests={"habana.ai/gaudi": "1"}, limits={"habana.ai/gaudi": "1"}
                    ),
                )
            ],
            tolerations=[
                client.V1Toleration(key="habana.ai/gaudi", operator="Exists", effect="NoSchedule")
            ],
        ),
    )


def _a_pod_gets_scheduled_and_runs(core: client.CoreV1Api) -> None:
    name = f"probe-{uuid.uuid4().hex[:6]}"

    def created() -> bool:
        try:
            core.create_namespaced_pod("default", _pod(name))
            return True
        except ApiException as e:
            return e.status == 409  # an earlier try got through
        except HTTPError:  # the API server is still coming back
            return False

    wait_for(created, timeout=90, interval=0.5, what="the API server to accept a pod")

    def running() -> bool:
        try:
            pod = core.read_namespaced_pod(name, "default")
        except (ApiException, HTTPError):
            return False
        return bool(pod.spec.node_name) and pod.status.phase == "Running"

    wait_for(running, timeout=90, interval=0.5, what=f"pod {name} scheduled and Running")
    core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def _kill_and_wait_for_restart(own: Cluster, component: str) -> int:
    old = own.procs.pid(component)
    assert old is not None
    os.kill(old, signal.SIGKILL)

    def replaced() -> int | None:
        new = own.procs.pid(component)
        return new if new not in (None, old) else None

    return int(wait_for(replaced, timeout=60, interval=0.2, what=f"{component} restarted"))  # type: ignore[arg-type]


def test_every_node_is_ready_with_eight_hpus_and_its_own_loopback_address(
    own_core: client.CoreV1Api,
) -> None:
    items = own_core.list_node(label_selector=POOL_LABEL).items
    assert len(items) == NODES
    addresses = []
    for n in items:
        assert n.status.capacity["habana.ai/gaudi"] == "8"
        assert n.status.allocatable["habana.ai/gaudi"] == "8"
        ready = next(c for c in n.status.conditions if c.type == "Ready")
        assert ready.status == "True", n.metadata.name
        addresses += [a.address for a in n.status.addresses if a.type == "InternalIP"]
    assert len(addresses) == NODES and len(set(addresses)) == NODES
    assert all(a.startswith("127.") for a in addresses)


def test_a_killed_scheduler_comes_back_and_pods_get_scheduled(
    own: Cluster, own_core: client.CoreV1Api
) -> None:
    _kill_and_wait_for_restart(own, "kube-scheduler")
    _a_pod_gets_scheduled_and_runs(own_core)
    last = [r for r in own.procs.restarts() if r["component"] == "kube-scheduler"][-1]
    assert last["exit_code"] == -signal.SIGKILL


def test_a_killed_api_server_comes_back_and_the_cluster_works_again(
    own: Cluster, own_core: client.CoreV1Api
) -> None:
    _kill_and_wait_for_restart(own, "kube-apiserver")
    wait_for(own.healthy, timeout=90, interval=0.5, what="the cluster to be healthy again")
    _a_pod_gets_scheduled_and_runs(own_core)
    assert own.restarts().get("kube-apiserver", 0) >= 1


def test_a_killed_kwok_comes_back_and_takes_the_nodes_over_at_once(
    own: Cluster, own_core: client.CoreV1Api
) -> None:
    coordination = client.CoordinationV1Api(own_core.api_client)

    def holders() -> set[str]:
        leases = coordination.list_namespaced_lease("kube-node-lease").items
        return {x.spec.holder_identity for x in leases} if len(leases) == NODES else set()

    (before,) = holders()
    _kill_and_wait_for_restart(own, "kwok")
    # Its new identity would otherwise wait out the old Leases (40 s) with the nodes
    # unmanaged; the supervisor's pre-start step releases them.
    wait_for(
        lambda: len(h := holders()) == 1 and before not in h,
        timeout=30,
        interval=0.5,
        what="the restarted kwok to hold every node Lease",
    )
    _a_pod_gets_scheduled_and_runs(own_core)


def test_status_shows_restarts_per_component(own: Cluster) -> None:
    out = CliRunner().invoke(cluster_app, ["status", "--name", own.name])
    assert out.exit_code == 0, out.output
    rows: dict[str, list[str]] = {}
    for line in out.output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 6:
            rows[cells[0]] = cells
    assert int(rows["kube-scheduler"][3]) >= 1 and rows["kube-scheduler"][4].startswith("-9 at ")
    assert int(rows["kube-apiserver"][3]) >= 1
    assert rows["etcd"][3] == "0"
    assert rows["kube-apiserver"][5].endswith(" MiB")
    assert rows["supervisor"][1].isdigit()
    assert f"{NODES} Gaudi nodes, {NODES} Ready" in out.output


def test_a_killed_supervisor_is_replaced_by_up_and_adopts_the_components(
    own: Cluster, own_core: client.CoreV1Api
) -> None:
    before, supervisor = own.running(), own.procs.supervisor_pid()
    assert supervisor is not None
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: own.procs.supervisor_pid() is None, timeout=10, what="supervisor gone")

    own.up(Settings(gaudi_nodes=NODES, hpus_per_node=8))
    assert own.procs.supervisor_pid() not in (None, supervisor)
    assert own.running() == before  # adopted, not restarted
    _kill_and_wait_for_restart(own, "kube-scheduler")  # and still supervised
    _a_pod_gets_scheduled_and_runs(own_core)
    last = [r for r in own.procs.restarts() if r["component"] == "kube-scheduler"][-1]
    assert last["exit_code"] == "unknown"  # not its child: no exit status to read


def test_down_stops_the_supervisor_and_every_component(own: Cluster) -> None:
    pids: dict[str, Any] = {c: own.procs.pid(c) for c in COMPONENTS}
    pids["supervisor"] = own.procs.supervisor_pid()
    assert all(pids.values()), pids
    stopped = own.down()
    assert stopped[0] == "supervisor" and set(COMPONENTS) <= set(stopped)
    # Exited processes may linger as zombies until init reaps them: those are gone too.
    assert not [p for p in pids.values() if Path(f"/proc/{p}").exists() and not is_zombie(p)]
    assert own.procs.strays() == []
    assert own.procs.supervised() == []
