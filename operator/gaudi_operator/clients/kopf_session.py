"""kopf's own HTTP session, fenced and named like the operator's other clients.

kopf writes through its session too: with our settings it posts Kubernetes events for
warnings and handler errors (`settings.posting`), and it would patch objects for
finalizers or progress if a handler ever needed them. A login handler that returns a
ready `kopf.AiohttpSession` is kopf's documented way to supply the session
(https://kopf.readthedocs.io/en/stable/authentication/#custom-http-sessions); the
credentials are those kopf itself reads through kubernetes_asyncio.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import kopf

from gaudi_operator.clients import fence, kube


def session_for(info: kopf.ConnectionInfo, component: str = "kopf") -> aiohttp.ClientSession:
    """The session kopf would build from `info` (its APIContext), with our User-Agent and
    every request through the fence."""
    headers = {**info.as_http_headers(), "User-Agent": kube.user_agent(component)}
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
        headers=headers,
        proxy=info.proxy_url,
        trust_env=bool(info.trust_env),
        request_class=fence.FencedRequest,
    )


async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
    """`@kopf.on.login` (registered in app.py). kopf calls it again after a 401, so a
    rotated service-account token gets a new session."""
    info = await kopf.login_via_async_client(**kwargs)
    if info is None:
        return None
    return kopf.AiohttpSession(
        server=info.server,
        default_namespace=info.default_namespace,
        priority=info.priority,
        aiohttp_session=session_for(info),
    )
