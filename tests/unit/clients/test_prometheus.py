"""The PromQL client's contract: typed samples, typed errors, placeholder filling.

Answers come from httpx.MockTransport shaped like Prometheus' documented responses; the
same client runs against the real Prometheus in tests/cluster/test_autoscaling_prometheus.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import httpx
import pytest

from gaudi_operator.clients.prometheus import (
    BadQuery,
    EmptyResult,
    PrometheusClient,
    PrometheusUnreachable,
    render_query,
)


def client_answering(handler: Callable[[httpx.Request], httpx.Response]) -> PrometheusClient:
    return PrometheusClient("http://prom:9090", transport=httpx.MockTransport(handler))


def vector(*points: tuple[dict[str, str], str]) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [{"metric": m, "value": [1700000000.5, v]} for m, v in points],
            },
        },
    )


def test_render_query_fills_job_and_namespace() -> None:
    q = 'sum(x{gtj="$job",gtj_namespace="${namespace}"}) / $jobs'
    assert render_query(q, "bert", "team-a") == 'sum(x{gtj="bert",gtj_namespace="team-a"}) / $jobs'


def test_render_query_escapes_quotes() -> None:
    assert render_query('x{a="$job"}', 'we"ird', "n") == 'x{a="we\\"ird"}'


async def test_instant_query_returns_typed_samples() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return vector(({"rank": "0"}, "12.5"), ({"rank": "1"}, "NaN"))

    async with client_answering(handler) as prom:
        samples = await prom.query("up", at=1700000000)
    assert samples[0].value == 12.5 and samples[0].labels == {"rank": "0"}
    assert samples[0].timestamp == 1700000000.5
    assert math.isnan(samples[1].value)
    form = dict(httpx.QueryParams(seen[0].content.decode()))
    assert form["query"] == "up" and form["time"] == "1700000000.000" and "timeout" in form


async def test_value_of_scalar_result() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}}
        )

    async with client_answering(handler) as prom:
        assert await prom.value("scalar(3)") == 3.0


async def test_empty_vector_is_empty_result_not_zero() -> None:
    async with client_answering(lambda r: vector()) as prom:
        assert await prom.query("absent_series") == []
        with pytest.raises(EmptyResult, match="returned no value"):
            await prom.value("absent_series")


async def test_nan_only_is_empty_result() -> None:
    async with client_answering(lambda r: vector(({}, "NaN"))) as prom:
        with pytest.raises(EmptyResult):
            await prom.value("0/0")


async def test_several_series_for_value_asks_for_aggregation() -> None:
    async with client_answering(lambda r: vector(({"a": "1"}, "1"), ({"a": "2"}, "2"))) as prom:
        with pytest.raises(BadQuery, match="sum"):
            await prom.value("x")


@pytest.mark.parametrize("status,error_type", [(400, "bad_data"), (422, "execution")])
async def test_refused_query_is_bad_query(status: int, error_type: str) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status,
            json={"status": "error", "errorType": error_type, "error": "parse error at char 4"},
        )

    async with client_answering(handler) as prom:
        with pytest.raises(BadQuery, match="parse error") as e:
            await prom.query("sum(")
    assert e.value.query == "sum(" and e.value.url == "http://prom:9090"


async def test_server_error_is_unreachable() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            503, json={"status": "error", "errorType": "timeout", "error": "query timed out"}
        )

    async with client_answering(handler) as prom:
        with pytest.raises(PrometheusUnreachable, match="503"):
            await prom.query("up")


async def test_connection_refused_is_unreachable() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=req)

    async with client_answering(handler) as prom:
        with pytest.raises(PrometheusUnreachable, match="cannot reach"):
            await prom.query("up")


async def test_timeout_is_unreachable() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=req)

    async with client_answering(handler) as prom:
        with pytest.raises(PrometheusUnreachable, match="did not answer"):
            await prom.query("up")


async def test_non_json_answer_is_unreachable() -> None:
    async with client_answering(lambda r: httpx.Response(200, text="<html>")) as prom:
        with pytest.raises(PrometheusUnreachable, match="without JSON"):
            await prom.query("up")


async def test_matrix_result_is_bad_query() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            content=json.dumps(
                {"status": "success", "data": {"resultType": "matrix", "result": []}}
            ),
        )

    async with client_answering(handler) as prom:
        with pytest.raises(BadQuery, match="range"):
            await prom.query("x[1m]")


def test_url_without_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        PrometheusClient("prom:9090")


def test_a_job_may_only_name_a_prometheus_the_operator_allows() -> None:
    from gaudi_operator.clients.prometheus import URLNotAllowed, choose_url

    default = "http://prometheus.monitoring:9090"
    assert choose_url("", default) == default
    assert choose_url(default + "/", default) == default
    allowed = ("http://team-prom.ml:9090",)
    assert choose_url("http://team-prom.ml:9090/", default, allowed) == "http://team-prom.ml:9090/"
    for bad in ("http://169.254.169.254/latest/meta-data", "file:///etc/passwd", "team-prom"):
        with pytest.raises(URLNotAllowed, match=r"^spec\.autoscaling\.prometheusURL: "):
            choose_url(bad, default, allowed)


async def test_error_messages_never_carry_the_response_body() -> None:
    # Messages end up in a job's status: a URL that is not Prometheus must not be read back.
    secret = "instance-credentials-AKIA0000"

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"status": "nope", "token": secret})

    async with client_answering(handler) as prom:
        with pytest.raises(PrometheusUnreachable) as err:
            await prom.query("up")
    assert secret not in str(err.value) and "HTTP 500" in str(err.value)


async def test_range_query_returns_each_series_oldest_first() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(
            200,
            json={
                "status": "success",
                "data": {
                    "resultType": "matrix",
                    "result": [
                        {"metric": {"gtj": "a"}, "values": [[100, "1"], [110, "2"]]},
                        {"metric": {"gtj": "b"}, "values": [[100, "NaN"]]},
                    ],
                },
            },
        )

    async with client_answering(handler) as prom:
        series = await prom.query_range("max by (gtj) (x)", 100, 110, 10)
    assert seen[0].url.path == "/api/v1/query_range"
    form = dict(x.split("=", 1) for x in seen[0].content.decode().split("&"))
    assert (form["start"], form["end"], form["step"]) == ("100.000", "110.000", "10")
    assert series[0].labels == {"gtj": "a"} and series[0].points == [(100.0, 1.0), (110.0, 2.0)]
    assert math.isnan(series[1].points[0][1])


async def test_range_query_refused_is_a_bad_query() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400, json={"status": "error", "errorType": "bad_data", "error": "parse error"}
        )

    async with client_answering(handler) as prom:
        with pytest.raises(BadQuery, match="parse error"):
            await prom.query_range("sum(", 0, 1, 1)
