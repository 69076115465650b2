"""In a pod that knows its IP, the launcher's rendezvous stores listen on that IP only,
and worker 0 hosts the rendezvous store (host networking: every loopback address is
local to every pod, so torch's own guess would make every worker a host)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gaudi_train.env import ElasticSettings, JobSettings
from gaudi_train.launcher import LaunchRequest, torchrun_argv

pytestmark = pytest.mark.unit

POD_ENV = {
    "PET_NNODES": "2:2",
    "PET_RDZV_BACKEND": "c10d",
    "PET_RDZV_ENDPOINT": "llm-worker-0.llm.team-a.svc:29400",
    "PET_RDZV_ID": "0b7c-3",
    "GAUDI3_POD_IP": "127.0.20.3",
}


def listeners() -> set[tuple[str, int]]:
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, port = local.split(":")
        if state == "0A":  # LISTEN
            ip = ".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0))
            found.add((ip, int(port, 16)))
    return found


@pytest.mark.parametrize(("index", "host"), [("0", "1"), ("1", "0")])
def test_worker_zero_hosts_and_every_store_binds_the_pod_ip(index: str, host: str) -> None:
    env = {**POD_ENV, "GAUDI3_WORKER_INDEX": index}
    request = LaunchRequest(JobSettings.from_env(env), ElasticSettings.from_env(env), ["m.py"])
    argv = torchrun_argv(request, nproc=1)
    assert argv[argv.index("--rdzv-backend") + 1] == "gaudi3-c10d"
    assert argv[argv.index("--rdzv-conf") + 1] == f"is_host={host},bind_addr=127.0.20.3"
    assert argv[argv.index("--local-addr") + 1] == "127.0.20.3"


def test_the_pods_world_size_reaches_the_rendezvous_as_world_pods() -> None:
    env = {**POD_ENV, "GAUDI3_WORKER_INDEX": "1", "GAUDI3_WORLD_PODS": "2"}
    request = LaunchRequest(JobSettings.from_env(env), ElasticSettings.from_env(env), ["m.py"])
    argv = torchrun_argv(request, nproc=1)
    conf = argv[argv.index("--rdzv-conf") + 1]
    assert conf == "is_host=0,bind_addr=127.0.20.3,world_pods=2"


@dataclass
class Round:
    """The fields of torch's `_RendezvousState` that the early close reads."""

    participants: dict[str, int] = field(default_factory=dict)
    wait_list: set[str] = field(default_factory=set)
    redundancy_list: set[str] = field(default_factory=set)
    complete: bool = False
    closed: bool = False


def joined(*nodes: str, **fields: Any) -> Round:
    return Round(participants=dict.fromkeys(nodes, 0), **fields)


def test_a_round_closes_early_once_the_worlds_pods_joined() -> None:
    from gaudi_train.rendezvous import closes_early

    assert closes_early(joined("a"), "a", min_nodes=1, world_pods=1)
    assert closes_early(joined("a", "b"), "b", min_nodes=1, world_pods=2)
    assert not closes_early(joined("a"), "a", min_nodes=1, world_pods=2)  # b not there yet


def test_a_round_never_closes_early_while_a_node_waits_to_join() -> None:
    from gaudi_train.rendezvous import closes_early

    # A pod kept through a scale-up still says 1; the new pod waits for the next round.
    assert not closes_early(joined("a", wait_list={"b"}), "a", min_nodes=1, world_pods=1)
    assert not closes_early(joined("a", redundancy_list={"b"}), "a", min_nodes=1, world_pods=1)


def test_only_a_participant_of_an_open_round_closes_it_and_never_below_min_nodes() -> None:
    from gaudi_train.rendezvous import closes_early

    assert not closes_early(joined("a"), "b", min_nodes=1, world_pods=1)
    assert not closes_early(joined("a", complete=True), "a", min_nodes=1, world_pods=1)
    assert not closes_early(joined("a", closed=True), "a", min_nodes=1, world_pods=1)
    assert not closes_early(joined("a"), "a", min_nodes=2, world_pods=1)


def free_port(addr: str) -> int:
    with socket.socket() as probe:
        probe.bind((addr, 0))
        return int(probe.getsockname()[1])


def rendezvous(port: int, run_id: str, host: bool, **conf: str) -> Any:
    """A `gaudi3-c10d` handler of a 1:2 job on 127.0.31.9, as torchrun would make it."""
    from torch.distributed.elastic.rendezvous import RendezvousParameters

    from gaudi_train.rendezvous import create_handler

    addr = "127.0.31.9"
    params = RendezvousParameters(
        "gaudi3-c10d",
        f"{addr}:{port}",
        run_id,
        1,
        2,
        local_addr=addr,
        is_host="1" if host else "0",
        bind_addr=addr,
        **conf,
    )
    return create_handler(params)


def test_a_one_pod_world_of_a_one_to_two_job_forms_without_torchs_last_call() -> None:
    # join_timeout < last_call: without the early close the join times out and raises.
    handler = rendezvous(
        free_port("127.0.31.9"), "early", True,
        world_pods="1", join_timeout="20", last_call_timeout="600",
    )  # fmt: skip
    try:
        started = time.monotonic()
        info = handler.next_rendezvous()
        print(f"1-pod world of nnodes 1:2 formed in {time.monotonic() - started:.2f} s")
        assert (info.rank, info.world_size) == (0, 1)
    finally:
        handler.shutdown()


def test_without_world_pods_a_round_below_max_nodes_waits_for_torchs_last_call() -> None:
    handler = rendezvous(free_port("127.0.31.9"), "unchanged", True, last_call_timeout="1")
    try:
        started = time.monotonic()
        assert handler.next_rendezvous().world_size == 1
        assert time.monotonic() - started >= 1
    finally:
        handler.shutdown()


def test_a_pod_kept_through_a_scale_up_waits_for_the_new_pod_instead_of_closing_alone() -> None:
    port = free_port("127.0.31.9")
    conf = {"join_timeout": "20", "last_call_timeout": "600"}
    kept = rendezvous(port, "grow", True, world_pods="1", **conf)
    new = rendezvous(port, "grow", False, world_pods="2", **conf)
    worlds: dict[str, int] = {}

    def join(name: str, handler: Any) -> None:
        worlds[name] = handler.next_rendezvous().world_size

    try:
        join("kept", kept)  # the world of 1 it was created for
        arrival = threading.Thread(target=join, args=("new", new), daemon=True)
        arrival.start()
        deadline = time.monotonic() + 20
        while kept.num_nodes_waiting() == 0:  # what torchrun's agent watches
            assert time.monotonic() < deadline, "the new pod never waited to join"
            time.sleep(0.05)
        join("kept", kept)  # the agent's re-rendezvous
        arrival.join(timeout=30)
        assert worlds == {"kept": 2, "new": 2}
    finally:
        new.shutdown()
        kept.shutdown()


def test_metrics_listen_on_the_pod_ip_unless_told_otherwise() -> None:
    assert JobSettings.from_env(POD_ENV).metrics_address == "127.0.20.3"
    explicit = {**POD_ENV, "GAUDI3_METRICS_ADDRESS": "127.0.0.1"}
    assert JobSettings.from_env(explicit).metrics_address == "127.0.0.1"


def test_the_store_listens_on_its_address_only_and_clients_reach_it() -> None:
    from gaudi_train.rendezvous import client_store, listening_store

    server = listening_store("127.0.31.9", 0, timedelta(seconds=5))
    assert ("127.0.31.9", server.port) in listeners()
    assert ("0.0.0.0", server.port) not in listeners()
    server.set("k", "v")
    assert client_store("127.0.31.9", server.port, timedelta(seconds=5)).get("k") == b"v"


def test_waiting_nodes_poll_faster_in_small_worlds_and_as_torch_does_in_large_ones() -> None:
    from gaudi_train.rendezvous import poll_seconds

    assert poll_seconds(2) == 0.1
    assert poll_seconds(50) == 0.5
    assert poll_seconds(1000) == 1.0


def test_only_torchs_one_second_poll_is_shortened(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous

    from gaudi_train.rendezvous import poll_faster

    slept: list[object] = []
    monkeypatch.setattr(dynamic_rendezvous, "_delay", lambda seconds: slept.append(seconds))
    poll_faster(0.2)
    poll_faster(0.1)  # a second handler in the process replaces, never stacks
    dynamic_rendezvous._delay(seconds=1)
    dynamic_rendezvous._delay(seconds=(0, 0.3))
    assert slept == [0.1, (0, 0.3)]


def test_a_client_started_before_its_store_connects_once_the_store_listens() -> None:
    import threading

    from gaudi_train.rendezvous import client_store, listening_store

    with socket.socket() as probe:
        probe.bind(("127.0.31.9", 0))
        port = probe.getsockname()[1]
    wait = timedelta(seconds=10)
    servers = []
    later = threading.Timer(0.5, lambda: servers.append(listening_store("127.0.31.9", port, wait)))
    later.start()
    client = client_store("127.0.31.9", port, wait)
    later.join()
    servers[0].set("k", "v")
    assert client.get("k") == b"v"
