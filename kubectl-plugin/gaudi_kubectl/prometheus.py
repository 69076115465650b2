"""The ranks' series from a Prometheus that scrapes the workers (`--prometheus-url`): one
instant query for every series of the jobs asked about, over the standard HTTP API
(https://prometheus.io/docs/prometheus/latest/querying/api/#instant-queries)."""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode, urlsplit

from gaudi_kubectl.metrics import SERIES_REGEX


class PrometheusError(Exception):
    pass


def selector(namespace: str | None, job: str | None = None) -> str:
    """PromQL selecting every training series of one job, a namespace's jobs (job None)
    or all jobs (both None). Kubernetes names need no escaping inside quotes."""
    labels = [f'__name__=~"{SERIES_REGEX}"']
    if namespace is not None:
        labels.append(f'gtj_namespace="{namespace}"')
    if job is not None:
        labels.append(f'gtj="{job}"')
    return "{" + ",".join(labels) + "}"


def _opener(url: str) -> urllib.request.OpenerDirector:
    """A Prometheus on this machine is asked directly, never through a proxy from the
    environment; others go the way the environment says."""
    host = urlsplit(url).hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    return urllib.request.build_opener(urllib.request.ProxyHandler({} if local else None))


def query(url: str, promql: str, timeout: float = 10) -> list[dict[str, Any]]:
    """An instant query's vector result."""
    full = f"{url.rstrip('/')}/api/v1/query?{urlencode({'query': promql})}"
    try:
        with _opener(url).open(full, timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            body = json.load(exc)
        except ValueError:
            raise PrometheusError(f"Prometheus at {url}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PrometheusError(f"Prometheus at {url}: {exc}") from exc
    if body.get("status") != "success":
        raise PrometheusError(f"Prometheus at {url}: {body.get('error') or body}")
    data = body.get("data") or {}
    if data.get("resultType") != "vector":
        raise PrometheusError(
            f"Prometheus at {url}: expected a vector, got {data.get('resultType')}"
        )
    return list(data.get("result") or [])
