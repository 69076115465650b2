"""kubernetes_asyncio for the benchmarks: typed API classes, over a kubeconfig.

The operator has its own JSON client (gaudi_operator.clients.kube) and never imports
kubernetes_asyncio; the benchmarks' load generators keep the generated APIs they were
written against (`core.list_namespaced_pod(...).items`, models with attributes).
"""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException


@dataclass
class Clients:
    api_client: client.ApiClient
    core: client.CoreV1Api
    custom: client.CustomObjectsApi

    async def close(self) -> None:
        await self.api_client.close()


async def connect(kubeconfig: str | None = None, pool_size: int = 64) -> Clients:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = pool_size  # the load generators create many at once
    api_client = client.ApiClient(configuration=cfg)
    return Clients(api_client, client.CoreV1Api(api_client), client.CustomObjectsApi(api_client))


def status_code(err: BaseException) -> int | None:
    return err.status if isinstance(err, ApiException) else None
