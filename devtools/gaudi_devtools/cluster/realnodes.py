"""Real nodes beside the kwok ones: a kubelet on its own containerd + runc per node, and
CoreDNS for the cluster's names.

Each node lives in ``<cluster>/nodes/<node>/`` (containerd root and state, runc state,
CNI config and pod logs; its containerd socket and kubelet root are in short folders
named for it, since socket paths are limited: ``RealNode.socket``, ``.kubelet_root``)
with its own cgroup root
``/gaudi3-<cluster>-<node>`` in every cgroup v1 hierarchy and its own loopback address
127.0.20.x. There is no pod network: pods run with ``hostNetwork: true`` on the node's
address (the kubelet reports it as the pod IP), so every listener in a pod must bind the
pod IP, never 0.0.0.0. CoreDNS answers ``cluster.local`` on another 127.0.20.x and
forwards nothing outside the cluster (other names are REFUSED).

Facts of this kind of machine that shape the set-up (checked with containerd 1.6 and runc
1.1 from Debian on cgroup v1): runc cannot start a container unless containerd's CRI
plugin restricts oom_score_adj (no CAP_SYS_RESOURCE); the kubelet needs
``failCgroupV1: false`` and the cgroupfs driver; it refuses a loopback ``--node-ip`` and
then reports no address, so the InternalIP (and the ``habana.ai/gaudi`` capacity, which no
device plugin advertises here) are patched into the Node's status after it registers.
The API server refuses loopback addresses in EndpointSlices, so CoreDNS cannot learn the
real nodes' pods from them: ``realnodes-sync`` (a small loop, also re-applying the status
patch after a kubelet re-registers) writes the headless-Service records of those pods to
a hosts file that CoreDNS serves before its kubernetes plugin. For the same reason
Prometheus cannot discover those pods: the loop also writes every real-node pod that asks
to be scraped (``prometheus.io/scrape: "true"``, the usual annotations) into a file of the
cluster's file_sd folder for pods, labelled with its namespace, pod and node, and scraped
without honor_labels as a kubernetes_sd job would: the operator limits a job's PromQL to
its `namespace` label, which a pod must not be able to set.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from gaudi_devtools.cluster import image_seed, nodes, oci, registry
from gaudi_devtools.cluster.pki import issue_cert

if TYPE_CHECKING:
    from gaudi_devtools.cluster.cluster import Cluster, Settings

REAL_LABEL = nodes.REAL_LABEL
ADDRESS_PREFIX = "127.0.20."
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
COREDNS_READY_PORT = 8181
CGROUP_FS = Path("/sys/fs/cgroup")
COREDNS = "coredns"
SYNC = "realnodes-sync"
SYNC_INTERVAL = 1.0
SCRAPE_TARGETS_FILE = "realnodes-pods.json"


def real_node_name(index: int) -> str:
    return f"gaudi3-real-{index}"


def _bindable(ip: str) -> bool:
    """Nobody else serves the kubelet or DNS port on this address."""
    for kind, port in ((socket.SOCK_STREAM, KUBELET_PORT), (socket.SOCK_DGRAM, 53)):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


def allocate_addresses(clusters: Path, own: str, count: int) -> list[str]:
    """``count`` loopback addresses no other local cluster has taken (their cluster.json
    keeps theirs even while stopped) and nothing listens on. Callers hold the lock."""
    if count == 0:
        return []
    used: set[str] = set()
    for f in clusters.glob("*/cluster.json"):
        if f.parent.name == own:
            continue
        with contextlib.suppress(OSError, ValueError):
            used |= set(json.loads(f.read_text()).get("addresses", {}).values())
    found = []
    for last in range(2, 255):
        ip = f"{ADDRESS_PREFIX}{last}"
        if ip not in used and _bindable(ip):
            found.append(ip)
            if len(found) == count:
                return found
    raise RuntimeError(f"no {count} free loopback addresses left in {ADDRESS_PREFIX}0/24")


@contextlib.contextmanager
def address_lock(clusters: Path):  # type: ignore[no-untyped-def]
    # Beside the clusters' folders, not among them: `down --all` lists every entry there.
    clusters.mkdir(parents=True, exist_ok=True)
    with (clusters.parent / "real-node-addresses.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _unescape_mount(path: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal.
    return path.encode().decode("unicode_escape")


def mounts_under(root: Path) -> list[str]:
    prefix = f"{root}/"
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        target = _unescape_mount(line.split()[1])
        if target == str(root) or target.startswith(prefix):
            found.append(target)
    return found


def cgroup_dirs(cgroup_root: str) -> list[Path]:
    """The node's cgroup root in every mounted hierarchy where it exists."""
    rel = cgroup_root.lstrip("/")
    if not CGROUP_FS.exists():
        return []
    return [h / rel for h in sorted(CGROUP_FS.iterdir()) if (h / rel).is_dir()]


def _cgroup_pids(d: Path) -> set[int]:
    pids: set[int] = set()
    # os.walk skips what vanishes under it (the kubelet and runc remove cgroups meanwhile).
    for top, _dirs, files in os.walk(d):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError, ValueError):
                pids |= {int(p) for p in Path(top, "cgroup.procs").read_text().split()}
    return pids


def dns_records(
    services: list[dict[str, Any]], pods: list[dict[str, Any]], domain: str = "cluster.local"
) -> list[tuple[str, str]]:
    """(address, name) pairs a cluster DNS gives for these pods through headless Services:
    ``<svc>.<ns>.svc`` for every selected ready pod, and ``<hostname>.<svc>.<ns>.svc`` for a
    pod whose subdomain is that Service, as the EndpointSlice path would."""
    records: set[tuple[str, str]] = set()
    for svc in services:
        spec, meta = svc.get("spec", {}), svc["metadata"]
        selector = spec.get("selector") or {}
        if spec.get("clusterIP") != "None" or not selector:
            continue
        ns, name = meta["namespace"], meta["name"]
        for pod in pods:
            pmeta, pspec, st = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
            labels = pmeta.get("labels") or {}
            ip = st.get("podIP")
            if (
                pmeta.get("namespace") != ns
                or pmeta.get("deletionTimestamp")
                or not ip
                or any(labels.get(k) != v for k, v in selector.items())
            ):
                continue
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in st.get("conditions", [])
            )
            if not ready and not spec.get("publishNotReadyAddresses"):
                continue
            base = f"{name}.{ns}.svc.{domain}"
            records.add((ip, base))
            if pspec.get("hostname") and pspec.get("subdomain") == name:
                records.add((ip, f"{pspec['hostname']}.{base}"))
    return sorted(records)


def scrape_targets(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """file_sd target groups for the pods annotated ``prometheus.io/scrape: "true"``, as
    the usual kubernetes_sd pod relabelling gives them: ``<pod IP>:<prometheus.io/port>``
    (every declared TCP container port when the annotation is missing), the path from
    ``prometheus.io/path``, labels namespace, pod and node. Finished or deleted pods are
    left out, so their series end when the pod does."""
    groups = []
    for pod in pods:
        meta, spec, st = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
        notes = meta.get("annotations") or {}
        ip = st.get("podIP")
        if (
            notes.get("prometheus.io/scrape") != "true"
            or not ip
            or meta.get("deletionTimestamp")
            or st.get("phase") in ("Succeeded", "Failed")
        ):
            continue
        if notes.get("prometheus.io/port", "").isdigit():
            ports = [int(notes["prometheus.io/port"])]
        else:
            ports = sorted(
                {
                    int(p["containerPort"])
                    for c in spec.get("containers", [])
                    for p in c.get("ports") or []
                    if p.get("protocol", "TCP") == "TCP"
                }
            )
        labels = {
            "namespace": meta["namespace"],
            "pod": meta["name"],
            "node": spec.get("nodeName", ""),
        }
        if notes.get("prometheus.io/path"):
            labels["__metrics_path__"] = notes["prometheus.io/path"]
        if ports:
            groups.append({"targets": [f"{ip}:{port}" for port in ports], "labels": labels})
    return sorted(groups, key=lambda g: (g["labels"]["namespace"], g["labels"]["pod"]))


def write_if_changed(path: Path, text: str) -> None:
    """Replace the file atomically (its readers never see half of it), only on a change."""
    if path.exists() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


KUBELET_ROOTS = Path("/var/lib/gaudi3")


@dataclass
class RealNode:
    name: str
    ip: str
    dir: Path
    cgroup_root: str

    @property
    def socket(self) -> Path:
        return image_seed.socket_for(self.dir / "containerd")

    @property
    def kubelet_root(self) -> Path:
        """The kubelet's --root-dir. It makes unix sockets there (pod-resources/<n>), whose
        path may have at most 107 bytes: under the user's cache (/home/<user>/.cache/…
        plus the cluster and node names) it can be longer, so the root is a short folder
        named for the node's, linked from `<node>/kubelet`."""
        return image_seed.short_folder(KUBELET_ROOTS, self.dir)

    @property
    def kubelet(self) -> str:
        return f"kubelet-{self.name}"

    @property
    def containerd(self) -> str:
        return f"containerd-{self.name}"


class RealNodes:
    """The real nodes (and CoreDNS) of one local cluster."""

    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        self.root = cluster.dir / "nodes"

    # -- layout -----------------------------------------------------------------------
    @property
    def hosts_file(self) -> Path:
        return self.root / "coredns" / "hosts"

    @property
    def targets_file(self) -> Path:
        return self.c.pod_targets_dir / SCRAPE_TARGETS_FILE

    def nodes(self, s: Settings) -> list[RealNode]:
        return [
            RealNode(
                name=real_node_name(i),
                ip=s.addresses[real_node_name(i)],
                dir=self.root / real_node_name(i),
                cgroup_root=f"/gaudi3-{self.c.name}-{real_node_name(i)}",
            )
            for i in range(s.real_nodes)
            if real_node_name(i) in s.addresses
        ]

    def _known_nodes(self) -> list[RealNode]:
        """Every node folder ever made here, for a `down` that must not miss one."""
        s = self.c.settings
        found = {n.name: n for n in self.nodes(s)} if s else {}
        if self.root.exists():
            for d in sorted(self.root.iterdir()):
                if (d / "containerd").is_dir() and d.name not in found:
                    found[d.name] = RealNode(d.name, "", d, f"/gaudi3-{self.c.name}-{d.name}")
        return list(found.values())

    @staticmethod
    def wanted_addresses(s: Settings) -> list[str]:
        return [real_node_name(i) for i in range(s.real_nodes)] + (
            [COREDNS] if s.real_nodes else []
        )

    # -- up ---------------------------------------------------------------------------
    def up(self, s: Settings) -> None:
        if not s.real_nodes:
            return
        if os.geteuid() != 0:
            raise PermissionError(
                "real nodes need root (their own cgroups, containerd's mounts): run as root, "
                "or use only simulated nodes (--real-nodes 0)"
            )
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        archive = oci.node_images(self.c.dir.parent.parent / "images" / "node-images.tar")
        seed = None
        if s.real_node_images:  # unpacked once, then hard-linked into every node
            seed = image_seed.ensure_seed(
                self.c.dir.parent.parent,
                [Path(a) for a in s.real_node_images],
                self.c.tool("containerd"),
                self.c.tool("ctr"),
                self.c.say,
            )
        self._start_coredns(s)
        todo = self.nodes(s)
        for node in todo:
            if seed is not None:
                image_seed.plant(seed, node.dir / "containerd" / "root")
            self._start_node(node, s, archive)
        for node in todo:
            self._wait_registered_and_patch(node, s)
        self._wait_ready([n.name for n in todo])
        # The same code as this process, wherever it was imported from.
        package_root = str(Path(__file__).resolve().parents[2])
        self.c.procs.start(
            SYNC,
            [
                sys.executable,
                "-c",
                "from gaudi_devtools.cluster.realnodes import main; main()",
                str(self.c.dir),
            ],
            env={"PYTHONPATH": package_root},
        )

    def _write_node_kubeconfig(self, node: RealNode, crt: Path, key: Path) -> Path:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.c.apiserver_url,
                        "certificate-authority": str(self.c.pki / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": node.name,
                    "user": {"client-certificate": str(crt), "client-key": str(key)},
                }
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": node.name}}],
            "current-context": "local",
        }
        path = node.dir / "kubeconfig"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        path.chmod(0o600)
        return path

    def _containerd_config(self, node: RealNode) -> Path:
        d = node.dir
        runc = shutil.which("runc") or "/usr/sbin/runc"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        text = f"""version = 2
root = "{d / "containerd" / "root"}"
state = "{d / "containerd" / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{node.socket}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "containerd" / "opt"}"

[{cri}]
  sandbox_image = "{oci.PAUSE_IMAGE}"
  # runc fails ("can't get final child's PID from pipe") without CAP_SYS_RESOURCE otherwise.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "{node.ip}"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{runc}"
  Root = "{d / "runc"}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{d / "cni"}"

# Registries by host (<dir>/<host:port>/hosts.toml, read at each pull): the cluster's
# own, in plain HTTP, when it runs one (registry.py).
[{cri}.registry]
  config_path = "{d / "certs.d"}"
"""
        path = d / "containerd.toml"
        path.write_text(text)
        return path

    def _kubelet_config(self, node: RealNode, s: Settings, crt: Path, key: Path) -> Path:
        cfg: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": node.ip,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": node.ip,
            "healthzPort": KUBELET_HEALTHZ_PORT,
            "tlsCertFile": str(crt),
            "tlsPrivateKeyFile": str(key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True, "cacheTTL": "30s"},
                "x509": {"clientCAFile": str(self.c.pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{node.socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": node.cgroup_root,
            "cgroupsPerQOS": True,
            "failCgroupV1": False,
            "failSwapOn": False,
            # Otherwise the kubelet writes KUBE-FIREWALL rules into the host's iptables.
            "makeIPTablesUtilChains": False,
            "clusterDomain": "cluster.local",
            "clusterDNS": [s.addresses[COREDNS]],
            # No host resolver in pods: dnsPolicy Default gets no nameserver at all.
            "resolvConf": "",
            "podLogsDir": str(node.dir / "pod-logs"),
            "volumePluginDir": str(node.dir / "volume-plugins"),
            "registerWithTaints": [nodes.GAUDI_TAINT],
            # A shared dev machine: don't evict pods or delete the imported images over disk.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            # Preloaded images (gaudi3.local/*, never in a registry) stay usable with
            # imagePullPolicy Never after the kubelet pulled the same image ID under
            # another name (the cluster's registry): by default (KEP-2535's
            # NeverVerifyPreloadedImages) the kubelet then counts the image as one it
            # pulled and wants credentials checked for every other name of it.
            "imagePullCredentialsVerificationPolicy": "NeverVerifyAllowlistedImages",
            "preloadedImagesVerificationAllowlist": [f"{oci.LOCAL_REGISTRY}/*"],
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "nodeStatusReportFrequency": "10s",
        }
        path = node.dir / "kubelet.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def _labels(self, s: Settings) -> dict[str, str]:
        hpus = str(s.hpus_per_node)
        return {
            "node.kubernetes.io/instance-type": "gaudi3-hls",
            "type": "real",
            nodes.POOL_LABEL: "true",
            REAL_LABEL: "true",
            "habana.ai/device.family": "gaudi",
            "habana.ai/device.type": "gaudi3",
            "habana.ai/device.count": hpus,
            "habana.ai/gaudi.present": "true",
            # The kubelet may set it: *.node.kubernetes.io is among its own label domains.
            nodes.SCALE_OUT_LABEL[0]: nodes.SCALE_OUT_LABEL[1],
        }

    def _make_cgroup_root(self, node: RealNode) -> None:
        # The kubelet wants its cgroup root to exist in every hierarchy; cpuset children
        # start empty, so copy the parent's CPUs and memory nodes.
        rel = node.cgroup_root.lstrip("/")
        for h in sorted(CGROUP_FS.iterdir()):
            if not (h / "cgroup.procs").exists():
                continue
            d = h / rel
            d.mkdir(exist_ok=True)
            for f in ("cpuset.cpus", "cpuset.mems"):
                if (h / f).exists() and not (d / f).read_text().strip():
                    (d / f).write_text((h / f).read_text())

    def _start_node(self, node: RealNode, s: Settings, archive: Path) -> None:
        self.c.say(f"starting real node {node.name} on {node.ip} (containerd + kubelet)")
        for sub in ("containerd/root", "containerd/state", "cni", "runc", "pod-logs", "certs.d"):
            (node.dir / sub).mkdir(parents=True, exist_ok=True)
        if s.registry:
            registry.write_hosts(node.dir / "certs.d", registry.address(s.ports))
        self._remove_kubelet_root(node)  # a previous start's, if its down was skipped
        node.kubelet_root.mkdir(parents=True, exist_ok=True)
        link = node.dir / "kubelet"
        if not link.is_symlink():
            link.symlink_to(node.kubelet_root)
        (node.dir / "cni" / "10-loopback.conflist").write_text(
            json.dumps(
                {"cniVersion": "1.0.0", "name": "gaudi3-host", "plugins": [{"type": "loopback"}]}
            )
        )
        pki = self.c.pki
        for stale in pki.glob(f"kubelet-{node.name}-*"):
            stale.unlink()  # the address may differ from the last `up`
        client_crt, client_key = issue_cert(
            pki, f"kubelet-{node.name}-client", f"system:node:{node.name}", "system:nodes"
        )
        serve_crt, serve_key = issue_cert(
            pki,
            f"kubelet-{node.name}-serving",
            f"system:node:{node.name}",
            "system:nodes",
            client=False,
            server_ips=(node.ip,),
            server_dns=(node.name,),
        )
        kubeconfig = self._write_node_kubeconfig(node, client_crt, client_key)

        image_seed.make_socket_folder(node.dir / "containerd")
        self.c.procs.start(
            node.containerd,
            [self.c.tool("containerd"), "--config", str(self._containerd_config(node))],
        )
        ctr = [self.c.tool("ctr"), "--address", str(node.socket), "--namespace", "k8s.io"]

        def containerd_up() -> bool:
            return subprocess.run([*ctr, "version"], capture_output=True, timeout=5).returncode == 0

        self.c._wait(f"containerd of {node.name}", containerd_up, 30, node.containerd)
        # No registry: the sandbox and test images come from a local archive (unpacked).
        out = subprocess.run(
            [*ctr, "images", "import", str(archive)], capture_output=True, text=True, timeout=120
        )
        if out.returncode != 0:
            raise RuntimeError(f"importing node images into {node.name} failed: {out.stderr}")

        self._make_cgroup_root(node)
        labels = ",".join(f"{k}={v}" for k, v in self._labels(s).items())
        self.c.procs.start(
            node.kubelet,
            [
                self.c.tool("kubelet"),
                f"--config={self._kubelet_config(node, s, serve_crt, serve_key)}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={node.kubelet_root}",
                f"--hostname-override={node.name}",
                # Refused (loopback) but keeps the kubelet from reporting the host's own
                # interfaces; the address is patched in after registration.
                f"--node-ip={node.ip}",
                f"--node-labels={labels}",
            ],
        )

    def trust_registry(self, s: Settings) -> None:
        """Point every real node's containerd at the cluster's registry (a registry added
        to a running cluster: containerd reads the hosts file at its next pull)."""
        if s.registry:
            for node in self.nodes(s):
                registry.write_hosts(node.dir / "certs.d", registry.address(s.ports))

    def import_image(self, archive: Path) -> list[str]:
        """Load an image archive (docker-archive or OCI) into every real node's containerd;
        returns the nodes it went into. The nodes import at once (half the time for two)."""
        s = self.c.settings
        running = []
        for node in self.nodes(s) if s else []:
            cmd = [self.c.tool("ctr"), "--address", str(node.socket), "--namespace", "k8s.io"]
            proc = subprocess.Popen(
                [*cmd, "images", "import", str(archive)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            running.append((node.name, proc))
        failed = []
        for name, proc in running:
            try:
                _, err = proc.communicate(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode != 0:
                failed.append(f"{name}: {err}")
        if failed:
            raise RuntimeError(f"importing {archive} failed: {'; '.join(failed)}")
        return [name for name, _ in running]

    def _api(self) -> httpx.Client:
        return httpx.Client(base_url=self.c.apiserver_url, verify=self.c._ssl(), timeout=5)

    def sync_once(self, s: Settings, api: httpx.Client) -> None:
        """Re-apply the status patch where a kubelet re-registered, and rewrite the hosts
        file CoreDNS serves and the pods Prometheus scrapes when the real nodes' pods or the
        headless Services changed."""
        real = {n.name: n for n in self.nodes(s)}
        listed = api.get("/api/v1/nodes", params={"labelSelector": f"{REAL_LABEL}=true"})
        listed.raise_for_status()
        hpus = str(s.hpus_per_node)
        for item in listed.json()["items"]:
            node = real.get(item["metadata"]["name"])
            st = item.get("status", {})
            if node and (
                st.get("addresses") != [{"type": "InternalIP", "address": node.ip}]
                or st.get("allocatable", {}).get(nodes.GAUDI_RESOURCE) != hpus
            ):
                self.patch_status(node, s)
        pods = []
        for name in real:
            r = api.get("/api/v1/pods", params={"fieldSelector": f"spec.nodeName={name}"})
            r.raise_for_status()
            pods += r.json()["items"]
        services = api.get("/api/v1/services")
        services.raise_for_status()
        text = "".join(f"{ip} {name}\n" for ip, name in dns_records(services.json()["items"], pods))
        write_if_changed(self.hosts_file, text)
        write_if_changed(self.targets_file, json.dumps(scrape_targets(pods), indent=1))

    def sync_forever(self) -> None:
        while True:
            s = self.c.settings
            if s is not None:
                try:
                    with self._api() as api:
                        self.sync_once(s, api)
                except (httpx.HTTPError, OSError, ValueError) as e:
                    print(f"sync failed, retrying: {e}", flush=True)
            time.sleep(SYNC_INTERVAL)

    def patch_status(self, node: RealNode, s: Settings) -> None:
        """One InternalIP (a Hostname address would send the API server to the machine's
        resolver) and the Gaudi capacity; re-applied after every registration."""
        hpus = str(s.hpus_per_node)
        body = {
            "status": {
                "addresses": [{"type": "InternalIP", "address": node.ip}],
                "capacity": {nodes.GAUDI_RESOURCE: hpus},
                "allocatable": {nodes.GAUDI_RESOURCE: hpus},
            }
        }
        with self._api() as api:
            r = api.patch(
                f"/api/v1/nodes/{node.name}/status",
                json=body,
                headers={"Content-Type": "application/merge-patch+json"},
            )
            r.raise_for_status()

    def _wait_registered_and_patch(self, node: RealNode, s: Settings) -> None:
        def registered() -> bool:
            with self._api() as api:
                return api.get(f"/api/v1/nodes/{node.name}").status_code == 200

        self.c._wait(f"{node.name} to register", registered, 60, node.kubelet)
        self.patch_status(node, s)

    def _wait_ready(self, names: list[str]) -> None:
        def ok() -> bool:
            with self._api() as api:
                for n in names:
                    st = api.get(f"/api/v1/nodes/{n}").json().get("status", {})
                    if not any(
                        c["type"] == "Ready" and c["status"] == "True"
                        for c in st.get("conditions", [])
                    ):
                        return False
            return True

        self.c._wait(f"real nodes {', '.join(names)} Ready", ok, 90)

    def _start_coredns(self, s: Settings) -> None:
        ip = s.addresses[COREDNS]
        self.c.say(f"starting CoreDNS on {ip}:53 (cluster.local only, no forwarding)")
        root = self.root / "coredns"
        root.mkdir(parents=True, exist_ok=True)
        corefile = root / "Corefile"
        self.hosts_file.write_text("")
        corefile.write_text(
            f"""cluster.local:53 in-addr.arpa:53 {{
    bind {ip}
    errors
    ready {ip}:{COREDNS_READY_PORT}
    # Pods on real nodes (loopback IPs have no EndpointSlice): written by {SYNC}.
    hosts {self.hosts_file} cluster.local {{
        reload 1s
        fallthrough
    }}
    kubernetes cluster.local in-addr.arpa {{
        kubeconfig {self.c.kubeconfig} gaudi3-{self.c.name}
    }}
}}
"""
        )
        self.c.procs.start(COREDNS, [self.c.tool("coredns"), "-conf", str(corefile)])

        def ready() -> bool:
            return (
                httpx.get(f"http://{ip}:{COREDNS_READY_PORT}/ready", timeout=2).status_code == 200
            )

        self.c._wait("CoreDNS /ready", ready, 60, COREDNS)

    # -- down -------------------------------------------------------------------------
    def down(self, api_up: bool) -> list[str]:
        """Stop every node and leave nothing behind: processes (kubelet, containerd, the
        shims, the pods' processes), mounts, cgroups and the Node objects."""
        stopped = []
        self.c.procs.stop(SYNC)  # it would re-patch the nodes being taken down
        self.targets_file.unlink(missing_ok=True)
        for node in self._known_nodes():
            if self.c.procs.pid(node.kubelet) or self.c.procs.pid(node.containerd):
                stopped.append(node.name)
            self.c.procs.stop(node.kubelet)
            self._kill_cgroup(node)
            self.c.procs.stop(node.containerd)
            self._kill_shims(node)
            image_seed.remove_socket_folder(node.dir / "containerd")
            self._unmount(node.dir)
            self._kill_cgroup(node)
            self._remove_cgroups(node)
            self._remove_kubelet_root(node)
            if api_up:
                with contextlib.suppress(httpx.HTTPError, OSError), self._api() as api:
                    api.delete(f"/api/v1/nodes/{node.name}")
        for name in (SYNC, COREDNS):
            if self.c.procs.pid(name) is not None:
                stopped.append(name)
            self.c.procs.stop(name)
        self._clean_host_paths()
        return stopped

    def _clean_host_paths(self) -> None:
        """The few paths a kubelet or containerd writes outside its own folders: the
        /var/log/containers links into our pods' logs, and (once no kubelet or containerd
        runs on the machine) the device-plugin socket and containerd's shim-socket folder."""
        logs = Path("/var/log/containers")
        if logs.is_dir():
            for link in logs.iterdir():
                with contextlib.suppress(OSError):
                    if link.is_symlink() and os.readlink(link).startswith(f"{self.root}/"):
                        link.unlink()
        running = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0]
                    running.add(os.path.basename(argv0.decode(errors="replace")))
        if "kubelet" not in running:
            with contextlib.suppress(OSError):
                Path("/var/lib/kubelet/device-plugins/kubelet.sock").unlink()
            for d in ("/var/lib/kubelet/device-plugins", "/var/lib/kubelet", str(logs)):
                with contextlib.suppress(OSError):
                    os.rmdir(d)  # only when empty: nothing else's is touched
        if "containerd" not in running:
            for d in ("/run/containerd/s", "/run/containerd"):
                with contextlib.suppress(OSError):
                    os.rmdir(d)

    def _kill_cgroup(self, node: RealNode) -> None:
        """SIGKILL every process in the node's pods (containers and sandboxes)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = set().union(*(_cgroup_pids(d) for d in cgroup_dirs(node.cgroup_root)))
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def _kill_shims(self, node: RealNode) -> None:
        # containerd-shim-runc-v2 outlives containerd by design; it names the socket.
        marker = str(node.socket)
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                args = (entry / "cmdline").read_bytes().split(b"\0")
                if any(marker.encode() in a for a in args):
                    pids.append(int(entry.name))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            for pid in pids:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)

    def _remove_kubelet_root(self, node: RealNode) -> None:
        """Unmount and delete the node's kubelet root; never while anything stays mounted
        there (a subPath bind mount would lead the delete into the host's own files)."""
        root = node.kubelet_root
        if not root.exists():
            return
        self._unmount(root)
        if mounts_under(root):
            self.c.say(f"{root}: still mounted, left in place: {mounts_under(root)}")
            return
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(OSError):
            KUBELET_ROOTS.rmdir()  # only when empty: another cluster's nodes may run

    @staticmethod
    def _unmount(root: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        mnt_detach = 2
        for _ in range(5):
            targets = mounts_under(root)
            if not targets:
                return
            # Deepest first, so a mount is never hidden under another being detached.
            for t in sorted(targets, key=len, reverse=True):
                libc.umount2(t.encode(), mnt_detach)

    @staticmethod
    def _remove_cgroups(node: RealNode) -> None:
        for top in cgroup_dirs(node.cgroup_root):
            for d, _dirs, _files in os.walk(top, topdown=False):  # children first
                with contextlib.suppress(OSError):
                    os.rmdir(d)

    # -- status -----------------------------------------------------------------------
    def healthy(self) -> bool:
        """Every process of every real node, CoreDNS and the sync loop run."""
        rows = self.rows()
        return (
            bool(rows)
            and all(k and c for _, _, k, c in rows)
            and all(self.c.procs.pid(n) for n in (COREDNS, SYNC))
        )

    def rows(self) -> list[tuple[str, str, int | None, int | None]]:
        """(node, address, kubelet pid, containerd pid) per real node."""
        s = self.c.settings
        if not s:
            return []
        return [
            (n.name, n.ip, self.c.procs.pid(n.kubelet), self.c.procs.pid(n.containerd))
            for n in self.nodes(s)
        ]


def main() -> None:
    """The sync loop; argv[1] is the cluster's folder."""
    from gaudi_devtools.cluster.cluster import Cluster

    cluster_dir = Path(sys.argv[1])
    cluster = Cluster(cluster_dir.name)
    if cluster.dir.resolve() != cluster_dir.resolve():
        raise SystemExit(f"{cluster_dir} is not a local cluster folder")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    RealNodes(cluster).sync_forever()
