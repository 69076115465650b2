"""The PromQL client against the cluster's real Prometheus scraping a test exporter."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.autoscaling.support import QUERY, exporter
from gaudi_devtools.cluster.processes import free_port
from gaudi_operator.clients.prometheus import (
    BadQuery,
    EmptyResult,
    PrometheusClient,
    PrometheusUnreachable,
    render_query,
)


async def _value_when_scraped(prom: PrometheusClient, q: str, want: float) -> float:
    import asyncio

    for _ in range(100):
        try:
            v = await prom.value(q)
            if v == want:
                return v
        except EmptyResult:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"Prometheus never returned {want} for {q}")


async def test_instant_query_reads_what_the_exporter_serves(cluster: Any) -> None:
    with exporter(cluster, "promql-test") as e:
        e.set_load("jobA", "ns1", 123.5)
        e.set_throughput("jobA", "ns1", [10.0, 20.0, 30.0])
        async with PrometheusClient(cluster.prometheus_url) as prom:
            assert await prom.ready()
            q = render_query(QUERY, "jobA", "ns1")
            assert await _value_when_scraped(prom, q, 123.5) == 123.5
            per_rank = await prom.query(
                'gaudi3_train_samples_per_second{gtj="jobA",gtj_namespace="ns1"}'
            )
            assert sorted(s.labels["rank"] for s in per_rank) == ["0", "1", "2"]
            assert sum(s.value for s in per_rank) == 60.0
            with pytest.raises(EmptyResult):
                await prom.value(render_query(QUERY, "no-such-job", "ns1"))
            with pytest.raises(BadQuery, match="parse error"):
                await prom.value("sum(")


async def test_unreachable_prometheus_is_a_typed_error() -> None:
    async with PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout=1) as prom:
        assert not await prom.ready()
        with pytest.raises(PrometheusUnreachable, match="cannot reach"):
            await prom.value("up")
