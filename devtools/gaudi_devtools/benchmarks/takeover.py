"""`gaudi3 benchmark takeover`: time from SIGKILL of the leading operator to the first
reconcile by the standby that takes over, on the local cluster.

Two `gaudi3 operator --leader-elect` processes run with the chart's RBAC (its ServiceAccount,
Roles and bindings rendered by `helm template` and applied; the processes authenticate with
the account's token), on one Lease. Each trial SIGKILLs the leader, creates a job at once
(a change made right after the kill), and stops the clock when that job's status is written,
which only the new leader can do. The killed process is started again as the next standby.

With `--in-pods` (a cluster with real nodes: `gaudi3 cluster up --real-nodes 2`) the two
replicas are the chart's own: `helm install` with the locally built image on the real nodes
(gaudi_devtools.operator_pods), and the leader's container process is SIGKILLed on the host;
its kubelet restarts it as the next standby.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from gaudi_devtools.benchmarks.failover import percentile
from gaudi_devtools.benchmarks.support import start_operator
from gaudi_devtools.cluster.nodes import REAL_LABEL
from gaudi_operator import api

NAMESPACE = "gaudi3-takeover"
RELEASE = "takeover"
# Its own release: the process mode applies the chart's RBAC under RELEASE without Helm,
# and Helm refuses to adopt objects it did not create.
POD_RELEASE = "takeover-pods"
LEASE = "gaudi-operator-takeover"
CHART = Path(__file__).resolve().parents[3] / "charts" / "gaudi-operator"
# Workers on kwok nodes only: a real node would try to pull the made-up image.
KWOK_ONLY = {
    "spec": {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": REAL_LABEL, "operator": "DoesNotExist"}]}
                    ]
                }
            }
        }
    }
}


def chart_identity(c: Any, path: Path) -> Path:
    """Apply the chart's ServiceAccount and RBAC (watching NAMESPACE only); return a
    kubeconfig that authenticates as that account."""
    rendered = subprocess.run(
        [
            c.tool("helm"),
            "template",
            RELEASE,
            str(CHART),
            "-n",
            NAMESPACE,
            "--set",
            f"watchNamespaces={{{NAMESPACE}}}",
            "--show-only",
            "templates/serviceaccount.yaml",
            "--show-only",
            "templates/rbac.yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    c.kubectl("apply", "-f", "-", input=rendered)
    account = next(
        d["metadata"]["name"]
        for d in yaml.safe_load_all(rendered)
        if d and d["kind"] == "ServiceAccount"
    )
    token = c.kubectl("create", "token", account, "-n", NAMESPACE, "--duration=2h").stdout
    admin = yaml.safe_load(Path(c.kubeconfig).read_text())
    cluster = admin["clusters"][0]
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token.strip()}}],
        "contexts": [{"name": account, "context": {"cluster": cluster["name"], "user": account}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


class Replica:
    def __init__(self, kubeconfig: Path, log: Path, args: list[str]) -> None:
        self.kubeconfig, self.log, self.args = kubeconfig, log, args
        self.proc: subprocess.Popen[bytes] | None = None
        self.identity = ""

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.proc = start_operator(self.kubeconfig, self.log, *self.args)
        deadline = time.monotonic() + 30
        while not self.identity and time.monotonic() < deadline:
            text = self.log.read_bytes()[offset:].decode(errors="replace")
            found = re.search(r"campaigning for the lease \S+ as (\S+)", text)
            self.identity = found.group(1) if found else ""
            time.sleep(0.1)
        if not self.identity:
            raise RuntimeError(f"no campaign in {self.log}")

    def holds(self, holder: str) -> bool:
        return bool(self.identity) and holder == self.identity

    def prepare(self) -> None:
        """Nothing to look up before the clock starts."""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.identity = ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class PodReplica:
    """One replica of the chart's Deployment on a real node."""

    def __init__(self, c: Any, release: str, namespace: str, name: str, timeout: float) -> None:
        self.c, self.release, self.namespace, self.name = c, release, namespace, name
        self.timeout = timeout
        self.pid = 0
        self.restarts = 0

    def _pod(self) -> dict[str, Any]:
        out = self.c.kubectl("get", "pod", self.name, "-n", self.namespace, "-o", "json")
        return dict(json.loads(out.stdout))

    def holds(self, holder: str) -> bool:
        from gaudi_devtools.operator_pods import pod_of

        return bool(holder) and pod_of(holder) == self.name

    def prepare(self) -> None:
        """Look the process up before the clock starts (a containerd round trip)."""
        from gaudi_devtools.operator_pods import host_pid

        pod = self._pod()
        self.restarts = pod["status"]["containerStatuses"][0]["restartCount"]
        self.pid = host_pid(self.c, pod)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def start(self) -> None:
        """Wait for the kubelet to restart the container and for it to be Ready again."""
        from gaudi_devtools.operator_pods import ready

        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            pod = self._pod()
            if pod["status"]["containerStatuses"][0]["restartCount"] > self.restarts and ready(pod):
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} was not restarted and Ready in {self.timeout:.0f}s")

    def stop(self) -> None:
        """The release is uninstalled as a whole."""


class Bench:
    def __init__(self, admin_kubeconfig: Path, timeout: float, lease: str = LEASE) -> None:
        self.kubeconfig = admin_kubeconfig
        self.timeout = timeout
        self.lease = lease

    async def __aenter__(self) -> Bench:
        from kubernetes_asyncio import client

        from gaudi_devtools import kube_async as kube

        self.clients = await kube.connect(str(self.kubeconfig))
        self.custom = self.clients.custom
        self.leases = client.CoordinationV1Api(self.clients.api_client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.clients.close()

    async def holder(self) -> str:
        try:
            lease = await self.leases.read_namespaced_lease(self.lease, NAMESPACE)
        except Exception:
            return ""
        return (lease.spec.holder_identity or "") if lease.spec else ""

    async def wait(self, what: str, check: Any, interval: float = 0.05) -> Any:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            found = await check()
            if found:
                return found
            await asyncio.sleep(interval)
        raise RuntimeError(f"timed out after {self.timeout:.0f}s waiting for {what}")

    async def create_job(self, name: str) -> None:
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": name},
            "spec": {"image": "gaudi-train:bench", "hpusPerWorker": 1, "template": KWOK_ONLY},
        }
        await self.custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, body
        )

    async def delete_job(self, name: str) -> None:
        await self.custom.delete_namespaced_custom_object(
            api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, name
        )

    async def has_status(self, name: str) -> bool:
        job = await self.custom.get_namespaced_custom_object(
            api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, name
        )
        return bool((job.get("status") or {}).get("phase"))

    async def trial(self, replicas: list[Replica] | list[PodReplica]) -> tuple[float, float]:
        """(kill -> Lease taken, kill -> first status written by the new leader)."""

        async def ours() -> str:
            # A Lease left by an earlier run names a process that is gone: wait it out.
            holder = await self.holder()
            return holder if any(r.holds(holder) for r in replicas) else ""

        holder = await self.wait("one of the replicas to lead", ours)
        leader = next(r for r in replicas if r.holds(holder))
        # The leader serves: a job gets its status (kopf and the controller are up).
        warm = f"warm-{uuid.uuid4().hex[:6]}"
        await self.create_job(warm)
        await self.wait(f"{warm} status", lambda: self.has_status(warm))
        await self.delete_job(warm)
        standby = next(r for r in replicas if r is not leader)
        job = f"takeover-{uuid.uuid4().hex[:6]}"
        leader.prepare()
        t0 = time.monotonic()
        leader.kill()
        await self.create_job(job)

        async def taken() -> bool:
            return standby.holds(await self.holder())

        async def lease_clock() -> float:
            await self.wait("the standby to take the lease", taken)
            return time.monotonic() - t0

        lease_task = asyncio.create_task(lease_clock())
        await self.wait(f"{job} status from the new leader", lambda: self.has_status(job))
        t_status = time.monotonic() - t0
        t_lease = await lease_task
        await self.delete_job(job)
        leader.start()  # back as the next standby
        return t_lease, t_status


def _pod_replicas(
    c: Any, lease_duration: int, renew_deadline: float, retry_period: float, timeout: float
) -> list[PodReplica]:
    """Install the chart's two replicas on the real nodes (watching NAMESPACE only)."""
    from gaudi_devtools import operator_pods

    archive = operator_pods.build_image()
    c.real_nodes.import_image(archive)
    election = {
        "enabled": True,
        "leaseDuration": lease_duration,
        "renewDeadline": renew_deadline,
        "retryPeriod": retry_period,
    }
    values = operator_pods.values(
        c,
        watchNamespaces=[NAMESPACE],
        crds={"enabled": False},
        replicaCount=2,
        leaderElection=election,
    )
    operator_pods.install(c, POD_RELEASE, NAMESPACE, values)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = operator_pods.pods(c, POD_RELEASE, NAMESPACE)
        if len(pods) == 2 and all(operator_pods.ready(p) for p in pods):
            return [
                PodReplica(c, POD_RELEASE, NAMESPACE, p["metadata"]["name"], timeout) for p in pods
            ]
        time.sleep(0.5)
    raise RuntimeError(f"the chart's replicas were not Ready in {timeout:.0f}s")


def takeover(
    cluster: Annotated[
        str, typer.Option(help="Local cluster name (gaudi3 cluster up).")
    ] = "gaudi3",
    trials: Annotated[int, typer.Option(min=1, help="Leader kills.")] = 5,
    # The chart's defaults.
    lease_duration: Annotated[int, typer.Option(help="Lease duration, seconds.")] = 15,
    renew_deadline: Annotated[float, typer.Option(help="Renew deadline, seconds.")] = 10,
    retry_period: Annotated[float, typer.Option(help="Retry period, seconds.")] = 2,
    chart_rbac: Annotated[
        bool,
        typer.Option(
            "--chart-rbac/--admin", help="Run as the chart's ServiceAccount, or as cluster admin."
        ),
    ] = True,
    in_pods: Annotated[
        bool,
        typer.Option(
            "--in-pods",
            help="The chart's two replicas in pods on the real nodes (helm install of the "
            "locally built image; needs `gaudi3 cluster up --real-nodes 2`), the leader's "
            "container process SIGKILLed. Uninstalled afterwards.",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Give up on one step after this.")] = 120,
) -> None:
    """Leader SIGKILLed -> first reconcile by the new leader, p50/p95/max over trials."""
    from gaudi_devtools.cluster import Cluster
    from gaudi_devtools.crd import install_crds

    c = Cluster(cluster)
    if not c.healthy():
        typer.echo(f"cluster {cluster!r} is not up: run `gaudi3 cluster up --name {cluster}`")
        raise typer.Exit(1)
    if in_pods and not (c.settings and c.settings.real_nodes >= 2):
        typer.echo(
            f"--in-pods needs 2 real nodes: `gaudi3 cluster up --name {cluster} --real-nodes 2`"
        )
        raise typer.Exit(1)
    install_crds(c)
    c.kubectl("create", "namespace", NAMESPACE, check=False)
    logs = c.dir / "logs"
    replicas: list[Replica] | list[PodReplica]
    if in_pods:
        from gaudi_devtools import operator_pods

        lease = f"{POD_RELEASE}-gaudi-operator"  # the chart's: the release's full name
        replicas = []
    else:
        lease = LEASE
        kubeconfig = chart_identity(c, logs / "takeover.kubeconfig") if chart_rbac else c.kubeconfig
        args = [
            "--health-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            f"--namespace={NAMESPACE}",
            "--leader-elect",
            f"--leader-election-namespace={NAMESPACE}",
            f"--leader-election-id={LEASE}",
            f"--lease-duration={lease_duration}",
            f"--renew-deadline={renew_deadline}",
            f"--retry-period={retry_period}",
        ]
        replicas = [Replica(Path(kubeconfig), logs / f"takeover-{n}.log", args) for n in "ab"]

    async def run() -> list[tuple[float, float]]:
        out = []
        async with Bench(Path(c.kubeconfig), timeout, lease) as bench:
            for i in range(trials):
                lease_s, status_s = await bench.trial(replicas)
                out.append((lease_s, status_s))
                typer.echo(
                    f"trial {i + 1}/{trials}: lease taken {lease_s:6.2f} s, "
                    f"first status {status_s:6.2f} s"
                )
        return out

    try:
        if in_pods:
            replicas = _pod_replicas(c, lease_duration, renew_deadline, retry_period, timeout)
        else:
            for r in replicas:
                r.start()
        results = asyncio.run(run())
    finally:
        for r in replicas:
            r.stop()
        if in_pods:
            operator_pods.uninstall(c, POD_RELEASE, NAMESPACE)
    where = "chart's pods on real nodes" if in_pods else "chart RBAC" if chart_rbac else "admin"
    typer.echo(
        f"\nleader SIGKILL -> first reconcile by the new leader (lease {lease_duration}s, "
        f"renew deadline {renew_deadline:g}s, retry {retry_period:g}s; {where})"
    )
    typer.echo(f"{'measure':14}{'trials':>7}{'p50 s':>9}{'p95 s':>9}{'max s':>9}{'mean s':>9}")
    for label, values in (
        ("lease taken", [r[0] for r in results]),
        ("first status", [r[1] for r in results]),
    ):
        typer.echo(
            f"{label:14}{len(values):>7}{percentile(values, 50):>9.2f}"
            f"{percentile(values, 95):>9.2f}{max(values):>9.2f}{statistics.mean(values):>9.2f}"
        )
