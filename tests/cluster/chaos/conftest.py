"""The chaos test kills the API server: it gets a cluster and an operator of its own, so a
fault it causes (or a component it finds broken) never reaches the other tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster.gtj import OperatorProcess


@dataclass
class Chaos:
    cluster: Any
    core: Any
    custom: Any
    operator: OperatorProcess
    namespace: str


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    from kubernetes import client, config

    from gaudi_devtools.cluster import Cluster
    from gaudi_devtools.cluster.cluster import Settings
    from gaudi_devtools.crd import install_crds

    c = Cluster(f"chaos-{os.getpid()}", say=lambda m: print(f"[chaos cluster] {m}", flush=True))
    c.up(Settings(gaudi_nodes=4, hpus_per_node=8, node_monitor_grace_seconds=20))
    op: OperatorProcess | None = None
    try:
        install_crds(c)
        api = config.new_client_from_config(config_file=str(c.kubeconfig))
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="chaos")))
        op = OperatorProcess(c.kubeconfig, Path(tmp_path_factory.mktemp("chaos")) / "operator.log")
        op.start()
        yield Chaos(c, core, custom, op, "chaos")
    finally:
        if op is not None:
            op.stop()
        c.delete()
