"""kubernetes_asyncio's generated classes are imported on first use, not all at start-up,
and everything the operator and kopf ask of the package still answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

PROBE = """
import json, sys
import gaudi_operator  # installs the lazy packages
import kopf  # imports V1ObjectMeta and V1OwnerReference from kubernetes_asyncio.client
import gaudi_operator.app, gaudi_operator.cli.operator_command
loaded_at_start = len([m for m in sys.modules if m.startswith("kubernetes_asyncio.client.")])
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException
import kubernetes_asyncio
import asyncio
async def decode():
    api = client.ApiClient(client.Configuration())
    try:
        return api._ApiClient__deserialize(
            {"metadata": {"name": "w-0", "ownerReferences": [{"apiVersion": "v1", "kind": "X",
             "name": "j", "uid": "u"}]}, "spec": {"containers": [{"name": "c"}]}}, "V1Pod")
    finally:
        await api.close()
pod = asyncio.run(decode())
print(json.dumps({
    "loaded_at_start": loaded_at_start,
    "pod": pod.metadata.owner_references[0].name,
    "same": kubernetes_asyncio.client is client and client.models.V1Pod is client.V1Pod,
    "api": client.CoreV1Api.__module__,
    "odd_case": client.V1APIService.__name__,
    "exception": ApiException is client.ApiException,
    "config": callable(config.load_kube_config),
}))
"""


def test_generated_classes_load_on_first_use() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("operator",))}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # Eagerly, the client package imports ~840 modules (every model and API class).
    assert got["loaded_at_start"] < 100, got
    assert got["pod"] == "j"  # nested models resolved by name while decoding
    assert got["same"] and got["exception"] and got["config"]
    assert got["api"] == "kubernetes_asyncio.client.api.core_v1_api"
    assert got["odd_case"] == "V1APIService"
