"""A small async client for the Prometheus HTTP API (instant queries), on httpx.

Callers need to tell three failures apart, because each asks for a different reaction:

- `PrometheusUnreachable`: connection refused, timeout, 5xx. Transient: hold and retry.
- `BadQuery`: Prometheus refused the PromQL (HTTP 400/422). The user must fix the spec;
  retrying the same text will not help.
- `EmptyResult`: the query ran but returned no sample (or NaN). The workers may not be
  scraped yet; never act on it as if it were zero.

All three derive from `PromQLError`, which carries the query and the server URL.

Usage::

    async with PrometheusClient("http://prometheus:9090") as prom:
        q = render_query('sum(rate(x{gtj="$job",gtj_namespace="$namespace"}[1m]))', "a", "ns")
        samples = await prom.query(q)          # list[Sample], may be empty
        value = await prom.value(q)            # one float, or EmptyResult
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import httpx

DEFAULT_TIMEOUT_SECONDS = 5.0


class PromQLError(Exception):
    """A query did not give a usable answer; `str()` says what and where."""

    def __init__(self, message: str, *, url: str = "", query: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.query = query


class URLNotAllowed(PromQLError):
    """A job asked for a Prometheus the operator was not configured to query."""


def choose_url(requested: str, default: str, allowed: Iterable[str] = ()) -> str:
    """The Prometheus to query for a job: the operator's own unless the job names one the
    operator allows. Anyone who may create a job must not make the operator send requests
    wherever it can reach, so any other URL is refused, naming the field."""
    if not requested or requested.rstrip("/") == default.rstrip("/"):
        return default
    field = "spec.autoscaling.prometheusURL"
    parts = urlsplit(requested)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise URLNotAllowed(f"{field}: {requested!r} is not an http(s) URL", url=requested)
    if requested.rstrip("/") not in {a.rstrip("/") for a in allowed}:
        raise URLNotAllowed(
            f"{field}: {requested!r} is not one of the Prometheus URLs this operator may "
            f"query (--prometheus-allowed-url); leave it empty to use the operator's own",
            url=requested,
        )
    return requested


class PrometheusUnreachable(PromQLError):
    """No answer from Prometheus: connection refused, timeout, or a 5xx."""


class BadQuery(PromQLError):
    """Prometheus refused the query (bad PromQL, or it failed to execute)."""


class EmptyResult(PromQLError):
    """The query ran but returned no sample, or only NaN."""


@dataclass(frozen=True)
class Sample:
    """One element of an instant-vector (or scalar) result."""

    value: float
    timestamp: float
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Series:
    """One series of a range-query (matrix) result: (timestamp, value) points, oldest first."""

    labels: Mapping[str, str]
    points: list[tuple[float, float]]


_PLACEHOLDER = re.compile(r"\$(?:\{(job|namespace)\}|(job|namespace)\b)")


def _escape_label_value(value: str) -> str:
    # Values land inside a double-quoted PromQL string.
    return value.replace("\\", "\\\\").replace('"', '\\"')


def render_query(template: str, job: str, namespace: str) -> str:
    """Fill `$job`/`${job}` and `$namespace`/`${namespace}` in a PromQL template.

    Other `$` words are left alone, so a typo stays visible in the BadQuery message
    instead of silently turning into an empty string.
    """
    values = {"job": _escape_label_value(job), "namespace": _escape_label_value(namespace)}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1) or m.group(2)], template)


def _parse_value(raw: Any) -> tuple[float, float]:
    """A Prometheus `[timestamp, "value"]` pair as floats ("NaN", "+Inf" included)."""
    ts, text = raw
    return float(ts), float(text)


class PrometheusClient:
    """Instant queries against one Prometheus. Create once, reuse, `aclose()` at the end."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"Prometheus URL {base_url!r}: expected http(s)://host:port")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        # Connecting should be quick; a slow query gets the whole budget.
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """Run an instant query; return its samples (possibly none).

        A scalar result comes back as one Sample without labels. Raises
        PrometheusUnreachable or BadQuery; never EmptyResult.
        """
        params: dict[str, str] = {"query": promql, "timeout": f"{self.timeout:g}s"}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = await self._post("/api/v1/query", params, promql)
        return self._samples(body.get("data") or {}, promql)

    async def query_range(self, promql: str, start: float, end: float, step: float) -> list[Series]:
        """Run a range query (`step` seconds apart, `start`..`end` in Unix seconds); return
        each series with its points, oldest first. Raises PrometheusUnreachable or BadQuery."""
        params = {
            "query": promql,
            "start": f"{start:.3f}",
            "end": f"{end:.3f}",
            "step": f"{max(step, 0.001):g}",
            "timeout": f"{self.timeout:g}s",
        }
        body = await self._post("/api/v1/query_range", params, promql)
        data = body.get("data") or {}
        if data.get("resultType") != "matrix":
            raise BadQuery(
                f"the range query {promql!r} gave a {data.get('resultType')} result",
                url=self.base_url,
                query=promql,
            )
        try:
            return [
                Series(
                    labels=dict(item.get("metric", {})),
                    points=[_parse_value(p) for p in item.get("values") or []],
                )
                for item in data.get("result") or []
            ]
        except (KeyError, TypeError, ValueError) as e:
            raise PrometheusUnreachable(
                f"Prometheus at {self.base_url} answered a malformed matrix result",
                url=self.base_url,
                query=promql,
            ) from e

    async def value(self, promql: str, at: float | None = None) -> float:
        """The query's single value: the query should aggregate (`sum`, `max`, ...).

        Raises EmptyResult for no sample or NaN, BadQuery for more than one series
        (the number to act on would be ambiguous).
        """
        samples = [s for s in await self.query(promql, at) if not math.isnan(s.value)]
        if not samples:
            raise EmptyResult(
                f"the query {promql!r} returned no value (are the series scraped yet?)",
                url=self.base_url,
                query=promql,
            )
        if len(samples) > 1:
            raise BadQuery(
                f"the query {promql!r} returned {len(samples)} series; aggregate it to one "
                f"(for example wrap it in sum(...))",
                url=self.base_url,
                query=promql,
            )
        return samples[0].value

    async def ready(self) -> bool:
        """True when Prometheus answers /-/ready; never raises."""
        try:
            return (await self._http.get("/-/ready")).status_code == 200
        except httpx.HTTPError:
            return False

    async def _post(self, path: str, params: dict[str, str], promql: str) -> dict[str, Any]:
        """POST a query; the JSON body of a successful answer, or the typed error."""
        try:
            resp = await self._http.post(path, data=params)
        except httpx.TimeoutException as e:
            raise PrometheusUnreachable(
                f"Prometheus at {self.base_url} did not answer within {self.timeout:g}s",
                url=self.base_url,
                query=promql,
            ) from e
        except httpx.HTTPError as e:
            raise PrometheusUnreachable(
                f"cannot reach Prometheus at {self.base_url}: {e.__class__.__name__}: {e}",
                url=self.base_url,
                query=promql,
            ) from e
        body = self._json(resp, promql)
        if resp.status_code in (400, 422) or (
            body.get("status") == "error" and body.get("errorType") in ("bad_data", "execution")
        ):
            raise BadQuery(
                f"Prometheus refused the query {promql!r}: "
                f"{body.get('error', f'HTTP {resp.status_code}')}",
                url=self.base_url,
                query=promql,
            )
        if resp.status_code >= 500 or body.get("status") != "success":
            raise PrometheusUnreachable(
                f"Prometheus at {self.base_url} answered HTTP {resp.status_code}: "
                f"{body.get('error', f'HTTP {resp.status_code}')}",
                url=self.base_url,
                query=promql,
            )
        return body

    def _json(self, resp: httpx.Response, promql: str) -> dict[str, Any]:
        try:
            body = resp.json()
        except ValueError as e:
            raise PrometheusUnreachable(
                f"Prometheus at {self.base_url} answered HTTP {resp.status_code} without JSON "
                f"(is this URL a Prometheus?)",
                url=self.base_url,
                query=promql,
            ) from e
        if not isinstance(body, dict):
            raise PrometheusUnreachable(
                f"Prometheus at {self.base_url} answered an unexpected body",
                url=self.base_url,
                query=promql,
            )
        return body

    def _samples(self, data: Mapping[str, Any], promql: str) -> list[Sample]:
        kind = data.get("resultType")
        result = data.get("result")
        try:
            if kind == "vector":
                out = []
                for item in result or []:
                    ts, v = _parse_value(item["value"])
                    out.append(Sample(value=v, timestamp=ts, labels=dict(item.get("metric", {}))))
                return out
            if kind == "scalar":
                ts, v = _parse_value(result)
                return [Sample(value=v, timestamp=ts)]
        except (KeyError, TypeError, ValueError) as e:
            raise PrometheusUnreachable(
                f"Prometheus at {self.base_url} answered a malformed {kind} result",
                url=self.base_url,
                query=promql,
            ) from e
        raise BadQuery(
            f"the query {promql!r} gives a {kind} result; use an instant vector or scalar "
            f"(drop the [range] selector or wrap it in a function such as rate())",
            url=self.base_url,
            query=promql,
        )
