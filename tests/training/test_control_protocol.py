"""The recovery protocol's messages, the control endpoint and how a launcher takes decisions
(no torch process: the launcher object is built without running)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from gaudi_train import control_protocol as proto
from gaudi_train.control_client import ControlClient
from gaudi_train.control_protocol import (
    Decision,
    Failure,
    LauncherStatus,
    ProtocolError,
    Resume,
    WorldView,
    root_failure,
    signal_exit_code,
)
from gaudi_train.control_server import ControlServer
from gaudi_train.env import ControlSettings, ElasticSettings, EnvError, JobSettings
from gaudi_train.worker_link import is_world_error

pytestmark = pytest.mark.unit


def failure(kind: str, time: str, **fields: Any) -> Failure:
    return Failure(kind=kind, in_place_generation=3, time=time, **fields)


def test_a_decision_names_the_field_it_gets_wrong() -> None:
    ok = Decision.from_json({"inPlaceGeneration": 4, "action": "restart", "worldPods": 2})
    assert ok == Decision(4, "restart", world_pods=2)
    cases = {
        "inPlaceGeneration: required": {"action": "restart", "worldPods": 2},
        "inPlaceGeneration: expected at least 1": {"inPlaceGeneration": 0, "worldPods": 2},
        "worldPods: required": {"inPlaceGeneration": 1, "action": "restart"},
        "action: expected one of restart, fail": {"inPlaceGeneration": 1, "action": "reboot"},
        "rendezvous: expected host:port": {
            "inPlaceGeneration": 1,
            "worldPods": 1,
            "rendezvous": "nohost",
        },
        "workerIndex: expected an integer": {
            "inPlaceGeneration": 1,
            "worldPods": 1,
            "workerIndex": "1",
        },
    }
    for message, body in cases.items():
        with pytest.raises(ProtocolError, match=message):
            Decision.from_json(body)
    # A Fail decision needs no world.
    assert Decision.from_json({"inPlaceGeneration": 2, "action": "fail"}).action == "fail"


def test_messages_survive_their_json_form() -> None:
    decision = Decision(5, "restart", world_pods=3, worker_index=2, rendezvous="10.1.2.3:29400")
    assert Decision.from_json(json.loads(json.dumps(decision.to_json()))) == decision
    status = LauncherStatus(
        version=7,
        state=proto.WAITING,
        in_place_generation=5,
        pod="llm-worker-1",
        node="node-a",
        worker_index=1,
        world_pods=2,
        world_size=4,
        ranks=(2, 3),
        step=40,
        failures=(
            failure(
                proto.PROCESS_EXIT, "2026-01-01T00:00:01Z", rank=3, exit_code=137, signal="SIGKILL"
            ),
        ),
        resumed=(Resume(rank=2, source="peer", step=40, from_rank=0),),
    )
    body = json.loads(json.dumps(status.to_json()))
    assert body["failures"][0]["root"] is True and body["ready"] is False
    assert LauncherStatus.from_json(body) == status


def test_the_root_failure_is_the_earliest_process_exit_not_a_broken_collective() -> None:
    broken = failure(proto.WORLD_BROKEN, "2026-01-01T00:00:01.000Z", rank=0)
    killed = failure(proto.PROCESS_EXIT, "2026-01-01T00:00:01.200Z", rank=3, exit_code=137)
    later = failure(proto.PROCESS_EXIT, "2026-01-01T00:00:02.000Z", rank=1, exit_code=1)
    assert root_failure([later, broken, killed]) == killed
    assert root_failure([broken]) == broken  # only consequences: the earliest
    assert root_failure([]) is None


def test_a_killed_process_exits_as_a_container_would() -> None:
    assert signal_exit_code(-9) == (137, "SIGKILL")
    assert signal_exit_code(-15) == (143, "SIGTERM")
    assert signal_exit_code(2) == (2, None)


def test_a_world_has_recovered_once_every_launcher_runs_the_new_generation() -> None:
    def status(state: str, generation: int) -> LauncherStatus:
        return LauncherStatus(version=1, state=state, in_place_generation=generation)

    view = WorldView({"a": status(proto.RUNNING, 2), "b": status(proto.RENDEZVOUS, 2)})
    assert view.acknowledged(2) and not view.running(2)
    assert not WorldView({"a": status(proto.WAITING, 1)}).acknowledged(2)
    assert WorldView({"a": status(proto.RUNNING, 2)}).running(2)


def test_the_control_endpoint_never_runs_without_a_token() -> None:
    assert not ControlSettings.from_env({}).managed
    with pytest.raises(EnvError, match="GAUDI3_CONTROL_TOKEN is empty"):
        ControlSettings.from_env({"GAUDI3_CONTROL_PORT": "29401"})
    with pytest.raises(EnvError, match="GAUDI3_SPARE=1 needs GAUDI3_CONTROL_PORT"):
        ControlSettings.from_env({"GAUDI3_SPARE": "1"})
    settings = ControlSettings.from_env(
        {
            "GAUDI3_CONTROL_PORT": "29401",
            "GAUDI3_CONTROL_TOKEN": "s3cret",
            "GAUDI3_POD_IP": "127.0.33.1",
            "GAUDI3_IN_PLACE_GENERATION": "4",
            "GAUDI3_PEER_STATE": "0",
        }
    )
    assert settings.managed and settings.address == "127.0.33.1"
    assert settings.in_place_generation == 4 and not settings.peer_state


def test_world_errors_are_told_from_bugs() -> None:
    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:1")
    assert is_world_error(gloo)
    wrapped = ValueError("step failed")
    wrapped.__cause__ = gloo
    assert is_world_error(wrapped)

    class DistNetworkError(RuntimeError):
        pass

    assert is_world_error(DistNetworkError("store"))
    assert not is_world_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_world_error(ValueError("bad batch"))


class _NoForks:
    pid = 0

    def stop(self) -> None:
        pass


def launcher(spare: bool = False, index: int = 1) -> Any:
    from gaudi_train.managed import ManagedLauncher

    env = {
        "GAUDI3_CONTROL_PORT": "0",
        "GAUDI3_CONTROL_TOKEN": "t",
        "GAUDI3_POD_IP": "127.0.33.2",
        "GAUDI3_IN_PLACE_GENERATION": "2",
        "PET_RDZV_ENDPOINT": "127.0.33.1:29400",
        "PET_NNODES": "2",
        "GAUDI3_WORKER_INDEX": str(index),
        **({"GAUDI3_SPARE": "1"} if spare else {}),
    }
    return ManagedLauncher(
        JobSettings.from_env(env),
        ElasticSettings.from_env(env),
        ControlSettings.from_env(env),
        ["--module", "gaudi_train.worker"],
        1,
        _NoForks(),  # type: ignore[arg-type]
    )


def test_a_launcher_takes_each_generation_once_and_refuses_older_ones() -> None:
    it = launcher()
    assert it.offer(Decision(2, "restart", world_pods=2))[0] == 200  # its start generation
    code, body = it.offer(Decision(3, "restart", world_pods=2))
    assert code == 202 and body["inPlaceGeneration"] == 3
    assert it.offer(Decision(3, "restart", world_pods=2))[0] == 200  # delivered again
    code, body = it.offer(Decision(3, "fail"))
    assert code == 409 and "already decided as 'restart'" in body["error"]
    code, body = it.offer(Decision(1, "restart", world_pods=2))
    assert code == 409 and "older than 3" in body["error"]
    code, body = it.offer(Decision(4, "restart", world_pods=2, worker_index=0))
    assert code == 409 and "this launcher is worker 1, not 0" in body["error"]
    assert it.offer(Decision(4, "fail", reason="rule"))[0] == 202


def test_a_spare_must_be_told_which_worker_it_replaces() -> None:
    it = launcher(spare=True)
    code, body = it.offer(Decision(3, "restart", world_pods=2))
    assert code == 409 and body["error"].startswith("workerIndex: required")
    assert it.offer(Decision(3, "restart", world_pods=2, worker_index=1))[0] == 202


class _Target:
    def __init__(self) -> None:
        self.version = 1
        self.decisions: list[Decision] = []
        self.cond = threading.Condition()

    def status_json(self, since: int | None = None, wait: float = 0.0) -> dict[str, Any]:
        deadline = time.monotonic() + wait
        with self.cond:
            while since == self.version and time.monotonic() < deadline:
                self.cond.wait(deadline - time.monotonic())
            return LauncherStatus(self.version, proto.RUNNING, 1).to_json()

    def ready(self) -> bool:
        return self.version > 1

    def offer(self, decision: Decision) -> tuple[int, dict[str, Any]]:
        self.decisions.append(decision)
        return 202, self.status_json()

    def bump(self) -> None:
        with self.cond:
            self.version += 1
            self.cond.notify_all()


def test_the_endpoint_wants_the_token_except_for_probes_and_long_polls_for_changes() -> None:
    target = _Target()
    server = ControlServer("127.0.0.1", 0, "s3cret", target)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + "/healthz") as resp:
            assert resp.status == 200
        with pytest.raises(urllib.error.HTTPError) as probe:
            urllib.request.urlopen(base + "/readyz")
        assert probe.value.code == 503
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(base + "/status")
        assert denied.value.code == 401

        wrong = ControlClient("127.0.0.1", server.port, "guess")
        assert wrong.decide(Decision(2, "restart", world_pods=1))[0] == 401
        client = ControlClient("127.0.0.1", server.port, "s3cret")
        code, body = client._call("POST", "/decision", {"inPlaceGeneration": 1})
        assert code == 400 and body["error"] == "worldPods: required"
        assert client.decide(Decision(2, "restart", world_pods=1))[0] == 202
        assert target.decisions == [Decision(2, "restart", world_pods=1)]

        threading.Timer(0.3, target.bump).start()
        started = time.monotonic()
        assert client.status(since=1, wait=10).version == 2
        assert 0.2 < time.monotonic() - started < 5
        assert client.ready()
    finally:
        server.stop()


def test_progress_alone_does_not_wake_the_operators_long_polls() -> None:
    it = launcher()
    it._publish()
    version = it.snapshot.version
    it.workers[0].step = 41
    it._publish()
    assert it.snapshot.step == 41 and it.snapshot.version == version
    it._set_state("waiting", "world broke")
    assert it.snapshot.version == version + 1
