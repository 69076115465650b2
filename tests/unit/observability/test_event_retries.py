"""Events the API server could not take are posted again, under the same name, as
client-go's recorder does (observability/events.py); what it refused is not."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from gaudi_operator.clients import kube
from gaudi_operator.observability import events
from unit.fake_api import FakeApi, api_error

pytestmark = pytest.mark.unit

JOB = {"metadata": {"name": "j", "namespace": "ns", "uid": "u1", "resourceVersion": "7"}}


@pytest.fixture(autouse=True)
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "RETRY_SECONDS", 0.0)


def failing(*answers: BaseException | None) -> Any:
    """A fault hook that answers the event POSTs in turn: raise, or None to let it pass."""
    left = list(answers)
    names: list[str] = []

    def fault(verb: str, resource: str, body: Mapping[str, Any]) -> kube.ApiError | None:
        assert (verb, resource) == ("POST", "events")
        names.append(body["metadata"]["name"])
        err = left.pop(0) if left else None
        if err is not None:
            raise err
        return None

    fault.names = names  # type: ignore[attr-defined]
    return fault


def post(api: FakeApi) -> None:
    async def go() -> None:
        await events.post_event(api.clients(), JOB, "Warning", "QuotaExceeded", "no room")
        await events.drain()

    asyncio.run(go())


def test_an_event_the_server_could_not_take_is_posted_again_under_its_name() -> None:
    api = FakeApi()
    api.fault = failing(api_error(503, "restarting"), aiohttp.ClientConnectionError("gone"))
    post(api)
    assert [e["reason"] for e in api.events] == ["QuotaExceeded"]
    assert api.requests[("POST", "events")] == 3
    names = api.fault.names  # type: ignore[attr-defined]
    assert len(set(names)) == 1, "every try carries the same name: a repeat is a 409"


def test_a_try_that_had_got_through_ends_the_retries() -> None:
    api = FakeApi()
    api.fault = failing(aiohttp.ServerDisconnectedError(), api_error(409, "already exists"))
    post(api)
    assert api.requests[("POST", "events")] == 2  # no third try
    assert api.events == []  # (the fake kept no copy of the first; the server had it)


def test_an_event_the_server_refused_is_not_tried_again() -> None:
    api = FakeApi()
    api.fault = failing(api_error(422, "message too long"))
    post(api)
    assert api.requests[("POST", "events")] == 1 and api.events == []


def test_tries_stop_after_client_gos_twelve(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi()
    api.fault = failing(*[api_error(500, "down")] * 20)
    post(api)
    assert api.requests[("POST", "events")] == events.TRIES == 12
    assert api.events == []
