"""In a pod that knows its IP, the launcher's rendezvous stores listen on that IP only,
and worker 0 hosts the rendezvous store (host networking: every loopback address is
local to every pod, so torch's own guess would make every worker a host)."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

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
