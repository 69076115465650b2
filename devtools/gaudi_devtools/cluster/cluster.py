"""The local cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok
with simulated Gaudi 3 nodes, and Prometheus, each a process on a free loopback port.

State lives in ``~/.cache/gaudi3/clusters/<name>/``: ``cluster.json`` (ports and settings),
``kubeconfig``, ``pki/``, ``logs/<component>.log``, ``logs/audit.log`` (the API server's
record of every write: audit.py), ``pids/``, ``specs/`` (what the supervisor restarts),
``restarts.jsonl`` and ``prometheus/targets/`` (a file_sd folder: drop a JSON target list
there and Prometheus scrapes it within seconds; pods' own targets go in
``prometheus/targets/pods/``, scraped without honor_labels).

A supervisor process per cluster (``supervisor.py``) restarts any component that exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import httpx
import yaml

import gaudi_devtools
from gaudi_devtools.cluster import audit, node_pool, nodes, registry
from gaudi_devtools.cluster.pki import ensure_pki, issue_cert
from gaudi_devtools.cluster.processes import Processes, free_port
from gaudi_devtools.cluster.realnodes import (
    RealNodes,
    address_lock,
    allocate_addresses,
)

CACHE = Path(os.environ.get("GAUDI3_CACHE", Path.home() / ".cache" / "gaudi3"))
BIN = CACHE / "bin"
CLUSTERS = CACHE / "clusters"

# Start order; stop goes the other way.
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "prometheus",
)
TOOLS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
    "prometheus",
)
REAL_NODE_TOOLS = ("kubelet", "containerd", "ctr", "runc", "coredns")
# hack/toolchain.sh's name for a binary it provides, where the two differ.
TOOL_JOB = {
    "kube-apiserver": "kubernetes",
    "kube-controller-manager": "kubernetes",
    "kube-scheduler": "kubernetes",
    "kubectl": "kubernetes",
    "containerd": "node-runtime",
    "ctr": "node-runtime",
    "runc": "node-runtime",
}


class ClusterError(RuntimeError):
    """Something the user can act on: the message says what and how."""


@dataclass
class Settings:
    """What ``up`` was asked for; kept in cluster.json so ``up`` again is a no-op."""

    gaudi_nodes: int = 4
    hpus_per_node: int = 8
    # kube-controller-manager marks a silent node Unknown after this.
    node_monitor_grace_seconds: int = 40
    # DefaultTolerationSeconds: pods leave a NotReady/Unreachable node after this.
    # 300 s is Kubernetes' default; the operator's failover must not depend on it.
    eviction_seconds: int = 300
    scrape_interval_seconds: int = 1
    # Nodes run by a real kubelet on containerd (see realnodes.py), beside the kwok ones.
    real_nodes: int = 0
    # Image archives every real node starts with (unpacked once: see image_seed.py).
    real_node_images: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    # Loopback addresses of the real nodes and CoreDNS.
    addresses: dict[str, str] = field(default_factory=dict)
    # An OCI registry on 127.0.0.1 (registry.py) that the real nodes pull from.
    registry: bool = False
    # The API server logs every write (who, what, when) to logs/audit.log.
    audit_log: bool = True


class Cluster:
    def __init__(self, name: str = "gaudi3", say: Callable[[str], None] | None = None) -> None:
        if not name.replace("-", "").isalnum():
            raise ClusterError(f"cluster name {name!r}: use letters, digits and '-'")
        self.name = name
        self.dir = CLUSTERS / name
        self.procs = Processes(self.dir)
        self.say = say or (lambda _msg: None)

    # -- paths -----------------------------------------------------------------------
    @property
    def real_nodes(self) -> RealNodes:
        return RealNodes(self)

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (read it with gaudi_devtools.cluster.audit.read)."""
        return self.dir / "logs" / "audit.log"

    @property
    def targets_dir(self) -> Path:
        """Test exporters and the operator's own targets (scraped with honor_labels: an
        exporter that stands in for many pods sets their `namespace` itself)."""
        return self.dir / "prometheus" / "targets"

    @property
    def pod_targets_dir(self) -> Path:
        """Pods' own targets (the real nodes' annotated pods), scraped as a Kubernetes
        service discovery job is: honor_labels false, so the target's `namespace` label wins
        over anything the pod serves (which becomes `exported_namespace`)."""
        return self.targets_dir / "pods"

    @property
    def settings(self) -> Settings | None:
        try:
            return Settings(**json.loads((self.dir / "cluster.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @property
    def prometheus_url(self) -> str:
        s = self.settings
        if not s:
            raise ClusterError(f"cluster {self.name!r} is not up: run `gaudi3 cluster up`")
        return f"http://127.0.0.1:{s.ports['prometheus']}"

    @property
    def registry_address(self) -> str:
        """``127.0.0.1:<port>`` of the cluster's registry (plain HTTP)."""
        s = self.settings
        if not s or not s.registry:
            raise ClusterError(
                f"cluster {self.name!r} has no registry: run `gaudi3 cluster up --registry`"
            )
        return registry.address(s.ports)

    @property
    def apiserver_url(self) -> str:
        s = self.settings
        if not s:
            raise ClusterError(f"cluster {self.name!r} is not up: run `gaudi3 cluster up`")
        return f"https://127.0.0.1:{s.ports['kube-apiserver']}"

    @staticmethod
    def tool(name: str) -> str:
        cached = BIN / name
        if cached.exists():
            return str(cached)
        found = shutil.which(name)
        if found:
            return found
        raise ClusterError(
            f"{name} is not built yet: run `bash hack/toolchain.sh {TOOL_JOB.get(name, name)}` "
            f"(or `make setup`, which builds every tool), which builds it into {BIN}"
        )

    # -- state -----------------------------------------------------------------------
    def components(self) -> tuple[str, ...]:
        """The control plane's components, with the registry when it was asked for."""
        s = self.settings
        return COMPONENTS + ((registry.COMPONENT,) if s and s.registry else ())

    def running(self) -> dict[str, int | None]:
        return {c: self.procs.pid(c) for c in self.components()}

    def processes(self) -> dict[str, int | None]:
        """Every process the cluster tracks: the control plane, then anything else started
        through ``Processes.start`` (real nodes, the demo's operator)."""
        names = [*self.components()]
        others = {*self.procs.names(), *self.procs.supervised()}
        names += [n for n in sorted(others) if n not in names]
        return {n: self.procs.pid(n) for n in names}

    def restarts(self) -> dict[str, int]:
        """Restarts the supervisor made, per component, since this cluster came up."""
        counts: dict[str, int] = {}
        for r in self.procs.restarts():
            counts[r["component"]] = counts.get(r["component"], 0) + 1
        return counts

    def healthy(self) -> bool:
        if self.settings is None or any(p is None for p in self.running().values()):
            return False
        if self.settings.real_nodes and not self.real_nodes.healthy():
            return False
        try:
            return self._get("/readyz").status_code == 200
        except (httpx.HTTPError, OSError):
            return False

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [self.tool("kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and out.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
        return out

    # -- up / down -------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):  # type: ignore[no-untyped-def]
        """One `up` or `down` of a cluster at a time, across processes."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def up(self, settings: Settings | None = None) -> None:
        with self._locked():
            self._up(settings or Settings())

    def _up(self, wanted: Settings) -> None:
        current = self.settings
        if current is not None and self.procs.supervisor_pid() is not None:
            # A component may be between exit and restart: give the supervisor its time
            # rather than starting the whole cluster afresh.
            with contextlib.suppress(ClusterError):
                self._wait("the supervised cluster to be healthy", self.healthy, 60)
        if self.healthy() and current is not None:
            if self.procs.supervisor_pid() is None:  # it was killed: a new one adopts
                self.say("starting the cluster supervisor (it adopts the running components)")
                self._start_supervisor()
            same = current.gaudi_nodes == wanted.gaudi_nodes and (
                current.hpus_per_node == wanted.hpus_per_node
            )
            if not same:
                self.say("cluster is up; adjusting its Gaudi nodes")
                before = self._node_flags(current)
                current.gaudi_nodes, current.hpus_per_node = (
                    wanted.gaudi_nodes,
                    wanted.hpus_per_node,
                )
                self._save(current)
                if self._node_flags(current) != before:  # leases and node monitor rescale
                    self.say("restarting kwok and kube-controller-manager for the new size")
                    for name in ("kwok", "kube-controller-manager"):
                        self.procs.stop(name)
                    self._start_controller_manager(current)
                    self._start_kwok(current)
                self._register_nodes(current)
            add_registry = wanted.registry and not current.registry
            if add_registry:  # kept once started: `up` without --registry leaves it
                self.say("cluster is up; adding its registry")
                current.registry = True
                current.ports[registry.COMPONENT] = free_port()
                self._save(current)
                self._start_registry(current)
                self.real_nodes.trust_registry(current)
            if current.real_nodes != wanted.real_nodes:
                self.say(f"cluster is up; re-creating its real nodes ({wanted.real_nodes} wanted)")
                self.real_nodes.down(api_up=True)
                current.real_nodes = wanted.real_nodes
                current.real_node_images = wanted.real_node_images  # the new nodes start with them
                self._allocate_addresses(current)
                self._start_real_nodes(current)
            elif same and not add_registry:
                self.say(f"cluster {self.name!r} is already up")
            return
        needed = (
            TOOLS
            + (REAL_NODE_TOOLS if wanted.real_nodes else ())
            + ((registry.COMPONENT,) if wanted.registry else ())
        )
        missing = [t for t in needed if not (BIN / t).exists() and not shutil.which(t)]
        if missing:
            jobs = sorted({TOOL_JOB.get(t, t) for t in missing})
            raise ClusterError(
                f"missing tools: {', '.join(missing)}: run `bash hack/toolchain.sh "
                f"{' '.join(jobs)}` (or `make setup`) to build them into {BIN}"
            )
        self._down(quiet=True)
        # A fresh etcd every time: a dev cluster that restarts clean is easier to trust.
        for sub in ("etcd", "logs", "prometheus", "pids", "specs", "registry"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)
        self.procs.restart_log.unlink(missing_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._start_supervisor()
        ensure_pki(self.pki)
        wanted.ports = {
            name: free_port()
            for name in (
                "etcd",
                "etcd-peer",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kwok",
                "prometheus",
                *((registry.COMPONENT,) if wanted.registry else ()),
            )
        }
        self._allocate_addresses(wanted)
        self._write_kubeconfig(wanted.ports["kube-apiserver"])
        try:
            self._start_etcd(wanted)
            self._start_apiserver(wanted)
            self._start_controller_manager(wanted)
            self._start_scheduler(wanted)
            self._start_kwok(wanted)
            self._start_prometheus(wanted)
            if wanted.registry:
                self._start_registry(wanted)
            self._register_nodes(wanted)
            self._wait_default_service_account()
            self._start_real_nodes(wanted)
        except BaseException:
            self.say(f"start failed; component logs are in {self.dir / 'logs'}")
            self._down(quiet=True)
            raise

    def down(self, quiet: bool = False) -> list[str]:
        if not self.dir.exists():
            return ["untracked leftovers"] if self.procs.kill_strays() else []
        with self._locked():
            return self._down(quiet)

    def _down(self, quiet: bool) -> list[str]:
        stopped = []
        # The supervisor first, or it would restart what we stop.
        if self.procs.stop_supervisor():
            stopped.append("supervisor")
        # Real nodes next, while the API server can still delete their Node objects.
        if not quiet and self.real_nodes.rows():
            self.say("stopping the real nodes")
        stopped += self.real_nodes.down(api_up=self.procs.pid("kube-apiserver") is not None)
        for name in reversed(COMPONENTS):
            if self.procs.pid(name) is not None:
                if not quiet:
                    self.say(f"stopping {name}")
                stopped.append(name)
            self.procs.stop(name)
        for name in sorted({*self.procs.names(), *self.procs.supervised()}):  # anything else
            if self.procs.pid(name) is not None:
                stopped.append(name)
            self.procs.stop(name)
        if self.procs.kill_strays():
            stopped.append("untracked leftovers")
        return stopped

    def stop_prometheus(self) -> None:
        """Take the metrics backend away (tests of the operator's MetricsUnavailable path)."""
        self.procs.stop("prometheus")

    def start_prometheus(self) -> None:
        """Bring it back on the same port; its scrape targets are kept."""
        s = self.settings
        if s is None:
            raise ClusterError(f"cluster {self.name!r} is not up: run `gaudi3 cluster up`")
        if self.procs.pid("prometheus") is None:
            self._start_prometheus(s)

    def delete(self) -> None:
        self.down(quiet=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- components ------------------------------------------------------------------
    def _start_real_nodes(self, s: Settings) -> None:
        try:
            self.real_nodes.up(s)
        except ClusterError:
            raise
        except (RuntimeError, OSError, httpx.HTTPError) as e:
            raise ClusterError(f"starting the real nodes failed: {e}") from e

    def _allocate_addresses(self, s: Settings) -> None:
        """Give the real nodes and CoreDNS loopback addresses no other cluster uses, and
        save the settings under the same lock so two `up`s never pick the same ones."""
        with address_lock(CLUSTERS):
            names = RealNodes.wanted_addresses(s)
            if sorted(s.addresses) != sorted(names):
                ips = allocate_addresses(CLUSTERS, self.name, len(names))
                s.addresses = dict(zip(names, ips, strict=True))
            self._save(s)

    def _start_supervisor(self) -> None:
        # The same gaudi_devtools as ours, wherever it was imported from (a worktree
        # under test, or the installed package).
        root = str(Path(gaudi_devtools.__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        try:
            self.procs.start_supervisor(
                [sys.executable, "-m", "gaudi_devtools.cluster.supervisor", f"{self.dir}/"],
                env={"PYTHONPATH": path},
            )
        except RuntimeError as e:
            raise ClusterError(str(e)) from e

    def _save(self, s: Settings) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "cluster.json").write_text(json.dumps(asdict(s), indent=2))

    def _write_kubeconfig(self, port: int) -> None:
        import base64

        def b64(p: str) -> str:
            return base64.b64encode((self.pki / p).read_bytes()).decode()

        ctx = f"gaudi3-{self.name}"
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": ctx,
                    "cluster": {
                        "server": f"https://127.0.0.1:{port}",
                        "certificate-authority-data": b64("ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": f"{ctx}-admin",
                    "user": {
                        "client-certificate-data": b64("admin.crt"),
                        "client-key-data": b64("admin.key"),
                    },
                }
            ],
            "contexts": [{"name": ctx, "context": {"cluster": ctx, "user": f"{ctx}-admin"}}],
            "current-context": ctx,
        }
        self.kubeconfig.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    def _wait(
        self,
        what: str,
        check: Callable[[], bool],
        timeout: float,
        component: str | None = None,
        interval: float = 0.25,
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if component and self.procs.pid(component) is None:
                raise ClusterError(
                    f"{component} exited during start-up; see {self.procs.logs / component}.log:\n"
                    + self._tail(component)
                )
            try:
                if check():
                    return
            except (httpx.HTTPError, OSError, subprocess.SubprocessError, ClusterError):
                pass
            time.sleep(interval)
        raise ClusterError(
            f"timed out after {timeout:.0f}s waiting for {what}"
            + (f"; last log lines of {component}:\n{self._tail(component)}" if component else "")
        )

    def _tail(self, component: str, lines: int = 15) -> str:
        try:
            text = (self.procs.logs / f"{component}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def _get(self, path: str) -> httpx.Response:
        with httpx.Client(verify=self._ssl(), timeout=3) as c:
            return c.get(f"{self.apiserver_url}{path}")

    def _start_etcd(self, s: Settings) -> None:
        self.say("starting etcd")
        client = f"http://127.0.0.1:{s.ports['etcd']}"
        peer = f"http://127.0.0.1:{s.ports['etcd-peer']}"
        self.procs.start(
            "etcd",
            [
                self.tool("etcd"),
                "--name=gaudi3",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=gaudi3={peer}",
                "--listen-metrics-urls=",
                # A throwaway test store: durability is not worth the fsync latency.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

        def ok() -> bool:
            return httpx.get(f"{client}/health", timeout=2).json().get("health") == "true"

        self._wait("etcd", ok, 30, "etcd")

    def _start_apiserver(self, s: Settings) -> None:
        self.say("starting kube-apiserver")
        pki = self.pki
        kubelet_client = issue_cert(
            pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"
        )
        audit_flags: list[str] = []
        if s.audit_log:
            policy = self.dir / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(audit.POLICY, sort_keys=False))
            audit_flags = audit.flags(policy, self.audit_log)
        self.procs.start(
            "kube-apiserver",
            [
                self.tool("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{s.ports['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={s.ports['kube-apiserver']}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=Node,RBAC",
                # As on hardened clusters: setting blockOwnerDeletion needs update on the
                # owner's finalizers, which the operator's RBAC must grant.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                "--allow-privileged=true",
                # The "kubernetes" Service would point at 127.0.0.1, which Endpoints reject.
                "--endpoint-reconciler-type=none",
                f"--default-not-ready-toleration-seconds={s.eviction_seconds}",
                f"--default-unreachable-toleration-seconds={s.eviction_seconds}",
                "--profiling=false",
                f"--cert-dir={self.dir / 'apiserver-certs'}",
                # logs/exec on real nodes: the API server authenticates to their kubelets,
                # checks their serving certs and reaches them on their loopback InternalIP.
                f"--kubelet-client-certificate={kubelet_client[0]}",
                f"--kubelet-client-key={kubelet_client[1]}",
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
                *audit_flags,
            ],
        )
        self._wait(
            "kube-apiserver /readyz",
            lambda: self._get("/readyz").status_code == 200,
            90,
            "kube-apiserver",
        )

    def _component_kubeconfig_flags(self) -> list[str]:
        kc = str(self.kubeconfig)
        return [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
        ]

    def _start_controller_manager(self, s: Settings) -> None:
        self.say("starting kube-controller-manager")
        self.procs.start(
            "kube-controller-manager",
            [
                self.tool("kube-controller-manager"),
                *self._component_kubeconfig_flags(),
                "--bind-address=127.0.0.1",
                f"--secure-port={s.ports['kube-controller-manager']}",
                "--leader-elect=false",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.pki / 'ca.crt'}",
                "--use-service-account-credentials=false",
                # Every pod here has a loopback IP (kwok's 127.244.0.0/16, real nodes'
                # 127.0.x), which the API server refuses in Endpoints and EndpointSlices:
                # those controllers could only post a Warning per Service and pass, and
                # CoreDNS learns the real pods from a hosts file (realnodes.py) instead.
                "--controllers=*,-bootstrapsigner,-tokencleaner,-csrsigning,-csrapproving,"
                "-endpoints-controller,-endpointslice-controller,"
                "-endpointslice-mirroring-controller",
                f"--node-monitor-period={nodes.monitor_period_seconds(s.gaudi_nodes)}s",
                "--node-monitor-grace-period="
                f"{nodes.monitor_grace_seconds(s.gaudi_nodes, s.node_monitor_grace_seconds)}s",
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
                f"--cert-dir={self.dir / 'kcm-certs'}",
            ],
        )

        self._wait_healthz(s, "kube-controller-manager")

    def _wait_healthz(self, s: Settings, component: str) -> None:
        """Until the component's own HTTPS /healthz on loopback answers 200."""

        def ok() -> bool:
            url = f"https://127.0.0.1:{s.ports[component]}/healthz"
            return httpx.get(url, verify=False, timeout=2).status_code == 200

        self._wait(f"{component} /healthz", ok, 60, component)

    def _start_scheduler(self, s: Settings) -> None:
        self.say("starting kube-scheduler")
        self.procs.start(
            "kube-scheduler",
            [
                self.tool("kube-scheduler"),
                *self._component_kubeconfig_flags(),
                "--bind-address=127.0.0.1",
                f"--secure-port={s.ports['kube-scheduler']}",
                "--leader-elect=false",
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
                f"--cert-dir={self.dir / 'scheduler-certs'}",
            ],
        )

        self._wait_healthz(s, "kube-scheduler")

    def _start_kwok(self, s: Settings) -> None:
        self.say("starting kwok (simulated Gaudi nodes and pod lifecycle)")
        stages = resources.files("gaudi_devtools.cluster") / "kwok-stages.yaml"
        config = self.dir / "kwok.yaml"
        config.write_text(stages.read_text())
        self.procs.start(
            "kwok",
            [
                self.tool("kwok"),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={config}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={nodes.KWOK_ANNOTATION}=fake",
                f"--server-address=127.0.0.1:{s.ports['kwok']}",
                # Simulated pods get addresses on loopback too: nothing may ever send traffic
                # to a private range from here, even by accident (a pod proxy, a probe).
                "--node-ip=127.244.0.1",
                "--cidr=127.244.0.1/16",
                f"--node-lease-duration-seconds={nodes.lease_seconds(s.gaudi_nodes)}",
                # INFO logs a line per Lease renewal: gigabytes a day at thousands of nodes.
                "--v=WARN",
            ],
            env={"HOME": str(self.dir)},  # kwok reads ~/.kwok; keep it inside the cluster
            # A restarted kwok has a new identity and would wait for the node Leases of
            # its previous run to expire (nodes unmanaged, Unknown meanwhile): drop them
            # in one request, and it creates them afresh.
            before=[
                self.tool("kubectl"),
                f"--kubeconfig={self.kubeconfig}",
                "--request-timeout=10s",
                "delete",
                "--raw",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            ],
        )

        def ok() -> bool:
            return (
                httpx.get(f"http://127.0.0.1:{s.ports['kwok']}/healthz", timeout=2).status_code
                == 200
            )

        self._wait("kwok /healthz", ok, 30, "kwok")

    def _start_prometheus(self, s: Settings) -> None:
        self.say("starting Prometheus")
        root = self.dir / "prometheus"
        self.pod_targets_dir.mkdir(parents=True, exist_ok=True)
        interval = f"{s.scrape_interval_seconds}s"
        cfg = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {
                    "job_name": "prometheus",
                    "static_configs": [{"targets": [f"127.0.0.1:{s.ports['prometheus']}"]}],
                },
                # Tests and the demo register their exporters here by writing files.
                {
                    "job_name": "gaudi3-targets",
                    "honor_labels": True,
                    "file_sd_configs": [
                        {"files": [str(self.targets_dir / "*.json")], "refresh_interval": "2s"}
                    ],
                },
                # Pods, as a kubernetes_sd pod job scrapes them: the operator limits a job's
                # queries to the `namespace` label, which a pod must not be able to set.
                {
                    "job_name": "gaudi3-pods",
                    "honor_labels": False,
                    "file_sd_configs": [
                        {
                            "files": [str(self.pod_targets_dir / "*.json")],
                            "refresh_interval": "2s",
                        }
                    ],
                },
            ],
        }
        (root / "prometheus.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.procs.start(
            "prometheus",
            [
                self.tool("prometheus"),
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{s.ports['prometheus']}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=6h",
            ],
        )

        def ok() -> bool:
            return (
                httpx.get(
                    f"http://127.0.0.1:{s.ports['prometheus']}/-/ready", timeout=2
                ).status_code
                == 200
            )

        self._wait("Prometheus /-/ready", ok, 60, "prometheus")

    def _start_registry(self, s: Settings) -> None:
        port = s.ports[registry.COMPONENT]
        self.say(f"starting the OCI registry on 127.0.0.1:{port} (plain HTTP)")
        root = self.dir / "registry"
        self.procs.start(
            registry.COMPONENT,
            registry.argv(self.tool("registry"), registry.write_config(port, root)),
            env=registry.ENV,
        )

        def ok() -> bool:
            return httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 200

        self._wait("the registry's /v2/", ok, 30, registry.COMPONENT)

    @staticmethod
    def _node_flags(s: Settings) -> tuple[int, int, int]:
        n = s.gaudi_nodes
        return (
            nodes.lease_seconds(n),
            nodes.monitor_period_seconds(n),
            nodes.monitor_grace_seconds(n, s.node_monitor_grace_seconds),
        )

    def _register_nodes(self, s: Settings) -> None:
        self.say(f"registering {s.gaudi_nodes} Gaudi 3 nodes ({s.hpus_per_node} HPUs each)")
        t0 = time.monotonic()
        try:
            removed = node_pool.sync_nodes(
                self.apiserver_url, self._ssl(), s.gaudi_nodes, s.hpus_per_node
            )
        except (node_pool.NodePoolError, httpx.HTTPError) as e:
            raise ClusterError(f"registering the Gaudi nodes failed: {e}") from e
        t1 = time.monotonic()
        self.say(
            f"registered in {t1 - t0:.1f}s"
            + (f" (removed {removed} nodes)" if removed else "")
            + "; waiting for kwok to make them Ready"
        )
        self._wait_nodes_ready(s.gaudi_nodes)
        self.say(f"{s.gaudi_nodes} nodes Ready {time.monotonic() - t0:.1f}s after the first POST")

    def ready_nodes(self) -> tuple[int, int]:
        """(Ready, all) simulated Gaudi nodes."""
        return node_pool.ready_nodes(self.apiserver_url, self._ssl())

    def _wait_nodes_ready(self, count: int) -> None:
        def ok() -> bool:
            ready, total = self.ready_nodes()
            return ready >= count and total == count

        # kwok initialises a few nodes in parallel: allow for thousands.
        # Each check lists every node (a table row each): poll big pools less often.
        interval = 0.25 if count <= 100 else 1.0
        self._wait(f"{count} Ready Gaudi nodes", ok, 60 + count / 10, "kwok", interval)

    def _wait_default_service_account(self) -> None:
        # Pods are refused until the token controller has made "default" accounts.
        self._wait(
            "the default service account",
            lambda: (
                self.kubectl(
                    "get", "serviceaccount", "default", "-n", "default", check=False
                ).returncode
                == 0
            ),
            60,
            "kube-controller-manager",
        )
