"""kopf's own HTTP session, fenced and named like the operator's other clients.

kopf writes through its session too: with our settings it posts Kubernetes events for
warnings and handler errors (`settings.posting`), and it would patch objects for
finalizers or progress if a handler ever needed them. A login handler that returns a
ready `kopf.AiohttpSession` is kopf's documented way to supply the session
(https://kopf.readthedocs.io/en/stable/authentication/#custom-http-sessions); the
credentials are those the operator's own client reads (clients/credentials.py), not a
client library's: kopf's `login_with_service_account` would dial kubernetes.default.svc
by name instead of $KUBERNETES_SERVICE_HOST, and its `login_with_kubeconfig` reads no
exec plugin and no file relative to the kubeconfig.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import kopf

from gaudi_operator.clients import credentials, kube


def session_for(info: kopf.ConnectionInfo, component: str = "kopf") -> aiohttp.ClientSession:
    """The session kopf would build from `info` (its APIContext), with our User-Agent and
    every request through the fence."""
    return kube.session_for(info, component)


async def login(**_: Any) -> kopf.AiohttpSession:
    """`@kopf.on.login` (registered in app.py). kopf calls it again after a 401, so a
    rotated service-account token gets a new session; an exec plugin's token expires the
    session when it does. `gaudi3 operator --kubeconfig` sets $KUBECONFIG."""
    try:
        creds = credentials.load()
    except (credentials.ConfigError, OSError) as err:
        raise kopf.LoginError(str(err)) from err
    info = await creds.connection_info()
    return kopf.AiohttpSession(
        server=info.server,
        default_namespace=info.default_namespace,
        expiration=info.expiration,
        aiohttp_session=session_for(info),
    )
