"""The chaos test kills the API server: it gets a cluster and two operator replicas of its
own (leader election on, a Lease of their own), so a fault it causes (or a component it
finds broken) never reaches the other tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster.leader import Candidate
from conftest import wait_for

NAMESPACE, QUOTA_NAMESPACE, LEASE = "chaos", "chaos-quota", "chaos-leader"


@dataclass
class Chaos:
    cluster: Any
    core: Any
    custom: Any
    leases: Any
    replicas: tuple[Candidate, Candidate]
    namespace: str  # the jobs the faults hit
    quota_namespace: str  # a namespace whose ResourceQuota refuses some workers
    lease: str


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    from kubernetes import client, config

    from gaudi_devtools.cluster import Cluster
    from gaudi_devtools.cluster.cluster import Settings
    from gaudi_devtools.crd import install_crds

    c = Cluster(f"chaos-{os.getpid()}", say=lambda m: print(f"[chaos cluster] {m}", flush=True))
    # The audit log (on by default) is the record the test reads: who deleted what, and
    # whether a deposed leader wrote after the takeover.
    c.up(Settings(gaudi_nodes=4, hpus_per_node=8, node_monitor_grace_seconds=20, audit_log=True))
    replicas: list[Candidate] = []
    try:
        install_crds(c)
        api = config.new_client_from_config(config_file=str(c.kubeconfig))
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        for ns in (NAMESPACE, QUOTA_NAMESPACE):
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        logs = Path(tmp_path_factory.mktemp("chaos"))
        replicas = [
            Candidate(c, logs / f"operator-{n}.log", [NAMESPACE, QUOTA_NAMESPACE], LEASE)
            for n in "ab"
        ]
        for r in replicas:
            r.start()
        wait_for(lambda: any(r.leading() for r in replicas), timeout=60, what="a leader")
        yield Chaos(
            c,
            core,
            custom,
            client.CoordinationV1Api(api),
            (replicas[0], replicas[1]),
            NAMESPACE,
            QUOTA_NAMESPACE,
            LEASE,
        )
    finally:
        for r in replicas:
            if r.proc is not None and r.proc.poll() is None:
                r.resume()  # a paused one would ignore SIGTERM until killed
            r.stop()
        c.delete()
