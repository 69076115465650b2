"""The local cluster's registry as configured: distribution's config (loopback only, storage
under the cluster), containerd's hosts.toml for it, the real nodes' containerd pointing its
CRI plugin at that folder, and the kubelet keeping preloaded images usable."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

from gaudi_devtools.cluster import registry
from gaudi_devtools.cluster.cluster import Cluster, Settings
from gaudi_devtools.cluster.realnodes import RealNode, RealNodes


def test_the_registry_listens_on_loopback_only_and_stores_under_the_cluster(
    tmp_path: Path,
) -> None:
    path = registry.write_config(23456, tmp_path / "registry")
    cfg = yaml.safe_load(path.read_text())
    assert cfg["http"]["addr"] == "127.0.0.1:23456"
    assert cfg["storage"]["filesystem"]["rootdirectory"] == str(tmp_path / "registry" / "data")
    assert cfg["log"]["accesslog"] == {"disabled": False}  # the tests read it
    assert registry.argv("/bin/registry", path) == ["/bin/registry", "serve", str(path)]
    # No trace exporter dialling localhost:4318.
    assert registry.ENV == {"OTEL_TRACES_EXPORTER": "none"}
    assert registry.address({"registry": 23456}) == "127.0.0.1:23456"


def test_containerd_reaches_it_over_plain_http_through_hosts_toml(tmp_path: Path) -> None:
    path = registry.write_hosts(tmp_path / "certs.d", "127.0.0.1:23456")
    assert path == tmp_path / "certs.d" / "127.0.0.1:23456" / "hosts.toml"
    hosts = tomllib.loads(path.read_text())
    assert hosts["server"] == "http://127.0.0.1:23456"
    assert hosts["host"]["http://127.0.0.1:23456"] == {
        "capabilities": ["pull", "resolve"],
        "skip_verify": True,
    }


def _node(tmp_path: Path) -> tuple[RealNodes, RealNode]:
    nodes = RealNodes(Cluster("unit-registry"))
    node = RealNode("gaudi3-real-0", "127.0.20.2", tmp_path / "node", "/gaudi3-x-gaudi3-real-0")
    node.dir.mkdir()
    return nodes, node


def test_each_real_node_s_containerd_reads_registry_hosts_from_its_certs_d(
    tmp_path: Path,
) -> None:
    nodes, node = _node(tmp_path)
    cfg = tomllib.loads(nodes._containerd_config(node).read_text())
    cri = cfg["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["registry"] == {"config_path": str(node.dir / "certs.d")}


def test_preloaded_gaudi3_local_images_need_no_pull_credentials(tmp_path: Path) -> None:
    # The kubelet would otherwise refuse a preloaded name (imagePullPolicy Never) once it
    # pulled the same image ID from the registry: tests/cluster/realnodes/test_registry.py.
    nodes, node = _node(tmp_path)
    s = Settings(real_nodes=1, addresses={"coredns": "127.0.20.9"})
    crt = key = tmp_path / "x"
    kubelet = yaml.safe_load(nodes._kubelet_config(node, s, crt, key).read_text())
    assert kubelet["imagePullCredentialsVerificationPolicy"] == "NeverVerifyAllowlistedImages"
    assert kubelet["preloadedImagesVerificationAllowlist"] == ["gaudi3.local/*"]
