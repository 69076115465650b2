"""Pure parts of the local cluster: PKI, node shape, kwok stages, process bookkeeping."""

from __future__ import annotations

import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from gaudi_devtools.cluster import nodes
from gaudi_devtools.cluster.nodes import gaudi_node
from gaudi_devtools.cluster.pki import ensure_pki
from gaudi_devtools.cluster.processes import Processes, _cmdline
from gaudi_operator import api


def test_pki_issues_server_and_admin_certs_signed_by_one_ca(tmp_path: Path) -> None:
    ensure_pki(tmp_path)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "apiserver.crt").read_bytes())
    admin = x509.load_pem_x509_certificate((tmp_path / "admin.crt").read_bytes())
    for cert in (server, admin):
        cert.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    org = admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert org == "system:masters"
    # A second call keeps the same CA, so exported kubeconfigs stay valid.
    before = (tmp_path / "ca.crt").read_bytes()
    ensure_pki(tmp_path)
    assert (tmp_path / "ca.crt").read_bytes() == before


def test_gaudi_node_advertises_hpus_hugepages_and_taint() -> None:
    node = gaudi_node("n0", hpus=8)
    assert node["status"]["allocatable"]["habana.ai/gaudi"] == "8"
    assert node["status"]["capacity"]["hugepages-2Mi"]
    assert node["metadata"]["labels"]["habana.ai/device.family"] == "gaudi"
    # Scale-out ready, as Intel's network operator labels a configured node.
    key, value = api.SCALE_OUT_READY_LABEL.split("=")
    assert node["metadata"]["labels"][key] == value == "true"
    assert node["spec"]["taints"] == [
        {"key": "habana.ai/gaudi", "value": "present", "effect": "NoSchedule"}
    ]


def test_node_addresses_are_unique_and_loopback_up_to_the_largest_cluster() -> None:
    addresses = [
        gaudi_node(nodes.node_name(i), index=i)["status"]["addresses"][0]["address"]
        for i in range(nodes.MAX_NODES)
    ]
    assert len(set(addresses)) == nodes.MAX_NODES
    for a in addresses:
        octets = [int(o) for o in a.split(".")]
        assert octets[0] == 127 and 0 < octets[3] < 255, a  # no .0 or .255 host part


def test_lease_renewals_stay_near_50_per_second_and_grace_outlasts_two_renewals() -> None:
    for count in (1, 4, 300, 500, 501, 2000, 5000, nodes.MAX_NODES):
        lease = nodes.lease_seconds(count)
        renewals_per_second = count / (lease / 4)  # kwok renews every quarter Lease
        assert lease >= 40 and renewals_per_second <= 51, (count, lease)
        for wanted in (2, 20, 40):
            grace = nodes.monitor_grace_seconds(count, wanted)
            assert grace >= wanted and grace >= 2 * lease / 4, (count, wanted, grace)
            if lease > 40:  # big clusters: the whole Lease, four renewals
                assert grace >= lease, (count, wanted, grace)
    assert nodes.lease_seconds(4) == 40  # small clusters keep Kubernetes' default
    assert nodes.monitor_grace_seconds(4, 20) == 20  # and the grace the tests ask for
    assert nodes.monitor_grace_seconds(1250, 40) == nodes.lease_seconds(1250) == 100


def test_kwok_config_has_lifecycle_and_chaos_stages() -> None:
    text = (resources.files("gaudi_devtools.cluster") / "kwok-stages.yaml").read_text()
    docs = list(yaml.safe_load_all(text))
    stages = {d["metadata"]["name"] for d in docs if d["kind"] == "Stage"}
    assert {"node-initialize", "pod-ready", "pod-delete"} <= stages
    assert {"pod-container-running-failed", "pod-complete", "node-not-ready"} <= stages


def test_stop_never_signals_a_recycled_pid(tmp_path: Path) -> None:
    procs = Processes(tmp_path)
    pid = procs.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    assert procs.pid("sleeper") == pid
    while not _cmdline(pid):  # let its exec finish: only then does /proc show the program
        time.sleep(0.01)
    # A pid file whose process runs another program is not ours.
    (procs.pids / "stranger.pid").write_text(f"{pid}\n/bin/not-this\n")
    assert procs.pid("stranger") is None
    procs.stop("stranger")
    assert procs.pid("sleeper") == pid
    procs.stop("sleeper")
    assert procs.pid("sleeper") is None
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0


def test_strays_without_pid_files_are_found_and_stopped(tmp_path: Path) -> None:
    procs = Processes(tmp_path)
    marker = tmp_path / "etcd"
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", f"--data-dir={marker}"]
    )
    try:
        while not _cmdline(stray.pid):  # exec still running: /proc shows no arguments yet
            time.sleep(0.01)
        assert stray.pid in procs.strays()
        assert procs.kill_strays(timeout=5) == [stray.pid]
        assert stray.wait(timeout=5) is not None
    finally:
        stray.kill()
