"""The Kubeflow Training Operator v1 (PyTorchJob) as the reconcile benchmark's peer.

`run_kubeflow(cluster, jobs, workers)` starts the operator (built by
`bash hack/toolchain.sh kubeflow-training-operator`) against a local cluster with its own
defaults (1 controller thread, 20 requests/s, burst 30, every job kind enabled), submits
worker-only PyTorchJobs whose pod template is the one this project's operator gives its
workers, times them to all pods Running and all jobs Running, deletes them, times until
every pod is gone, and reads the operator's peak resident memory.

Its webhook server listens on every interface (`webhook.NewServer` is given a port and no
host), and nothing may listen beyond loopback here, so the operator runs in a network
namespace of its own whose only interface is loopback. Its API traffic reaches the host's
kube-apiserver through a Unix socket (`unix_bridge.py`, one pipe on each side), on the same
port number, so the cluster's kubeconfig works unchanged inside. A mount namespace gives it a
private /tmp, where the webhook serving certificate is written from the Secret the
operator's own cert rotator fills (it starts its controllers only once the files are there).
No webhook configuration is registered with the API server (it could not reach the webhook
anyway): admission validation of PyTorchJobs is off, which does not change reconcile speed.
It runs with the cluster's admin client certificate (system:masters) in place of its RBAC.

Manual run on a local cluster (`gaudi3 cluster up --name kf --gaudi-nodes 125`):
    python -m gaudi_devtools.benchmarks.kubeflow --cluster kf --jobs 100 --workers 8
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from gaudi_devtools.benchmarks.support import peak_rss_mib
from gaudi_devtools.benchmarks.writes import controller_writes, request_totals
from gaudi_devtools.cluster import Cluster
from gaudi_operator.api import GaudiTrainingJobSpec
from gaudi_operator.jobs.manifests import JobRef, worker_pod_manifest

VERSION = "v1.9.3"
TOOL = "kubeflow-training-operator"
GROUP, KF_VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
# PyTorchJob requires its container to be called this (it gets the torch env injected).
CONTAINER = "pytorch"
OPERATOR_NAMESPACE = "kubeflow"  # MY_POD_NAMESPACE: where its cert rotator's Secret lives
WEBHOOK_SECRET = "training-operator-webhook-cert"  # --webhook-secret-name's default
CERT_DIR = "tmp/k8s-webhook-server/serving-certs"  # fixed in its pkg/cert, under /tmp
# The torch wiring is the Kubeflow operator's to set; ours would be duplicates.
_OWN_ENV = re.compile(r"^(PET_|MASTER_|GAUDI3_WORKER_INDEX$|GAUDI3_GENERATION$)")


# -- manifests (pure) -----------------------------------------------------------------------
def bench_spec(workers: int, hpus: int) -> dict[str, Any]:
    """The GaudiTrainingJob spec the reconcile benchmark submits."""
    return {
        "image": "gaudi-train:bench",
        "hpusPerWorker": hpus,
        "workers": {"replicas": workers},
        # Small requests, so the benchmark measures the operator, not node capacity.
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
    }


def pod_template(name: str, namespace: str, workers: int, hpus: int) -> dict[str, Any]:
    """This project's worker pod for job `name`, as a PyTorchJob replica template: the same
    resources, volumes, tolerations and annotations; without the fields the Kubeflow
    operator sets itself (name, owner, labels, hostname, subdomain, torch rendezvous env)."""
    spec = GaudiTrainingJobSpec.model_validate(bench_spec(workers, hpus))
    pod = worker_pod_manifest(spec, JobRef(name=name, namespace=namespace, uid=""), 0, 0)
    meta = pod["metadata"]
    pod_spec = dict(pod["spec"])
    for key in ("hostname", "subdomain", "restartPolicy"):
        pod_spec.pop(key, None)
    container = dict(pod_spec["containers"][0])
    container["name"] = CONTAINER
    container["env"] = [e for e in container["env"] if not _OWN_ENV.match(e["name"])]
    pod_spec["containers"] = [container, *pod_spec["containers"][1:]]
    # No labels of ours: they say which operator owns a pod, and Kubeflow sets its own.
    return {
        "metadata": {"annotations": dict(meta.get("annotations") or {})},
        "spec": pod_spec,
    }


def pytorchjob_manifest(name: str, namespace: str, workers: int, hpus: int) -> dict[str, Any]:
    """A worker-only PyTorchJob (no Master replica: worker 0 is the rendezvous master, and
    no init container waits for a master) of `workers` pods."""
    return {
        "apiVersion": f"{GROUP}/{KF_VERSION}",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "pytorchReplicaSpecs": {
                "Worker": {
                    "replicas": workers,
                    "restartPolicy": "Never",
                    "template": pod_template(name, namespace, workers, hpus),
                }
            },
        },
    }


def job_running(job: dict[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Running" and c.get("status") == "True" for c in conditions)


# -- the operator in its own network namespace ------------------------------------------------
def tool_dir() -> Path:
    """The versioned folder `hack/toolchain.sh kubeflow-training-operator` builds."""
    from gaudi_devtools.cluster.cluster import BIN

    link = BIN / TOOL
    if not link.exists():
        raise RuntimeError(
            f"{TOOL} is not built: run `bash hack/toolchain.sh kubeflow-training-operator`"
        )
    return link.resolve().parent


def install_crds(cluster: Cluster) -> None:
    """Every job kind's CRD of the pinned version: by default the operator runs a
    controller for each, and a missing CRD stops it. Server-side: they exceed the size
    client-side apply can store."""
    crds = tool_dir() / "crds"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in sorted(crds.glob("*.yaml"))]
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names]
    )


def _tls(cluster: Cluster) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
    ctx.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
    return ctx


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    tmp.replace(path)


@dataclass
class KubeflowOperator:
    """The running operator: `pid` is the operator itself (inside its namespaces)."""

    proc: subprocess.Popen[bytes]
    bridge: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def peak_rss_mib(self) -> float | None:
        return peak_rss_mib(self.proc.pid)

    def stop(self) -> None:
        # Each runs in a session of its own: the group holds its bridge child too, which
        # outlives the leader when the operator exited first.
        for p in (self.proc, self.bridge):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in (self.proc, self.bridge):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


def start_kubeflow(cluster: Cluster, log: Path, timeout: float = 120) -> KubeflowOperator:
    """Apply the CRDs, the namespace and the (empty) webhook Secret, start the operator in
    its own network and mount namespaces, and return once its PyTorchJob controller runs."""
    binary = tool_dir() / TOOL
    install_crds(cluster)
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump_all(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
                # Its cert rotator fills this Secret but will not create it.
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": WEBHOOK_SECRET, "namespace": OPERATOR_NAMESPACE},
                },
            ]
        ),
    )
    run = cluster.dir / "kubeflow"
    private_tmp = run / "tmp"
    certs = run / CERT_DIR
    for stale in (certs / "tls.crt", certs / "tls.key"):
        stale.unlink(missing_ok=True)
    certs.mkdir(parents=True, exist_ok=True)
    sock = run / "api.sock"
    port = int(cluster.apiserver_url.rsplit(":", 1)[1])
    bridge_py = str(Path(__file__).with_name("unix_bridge.py"))
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("ab")
    bridge = subprocess.Popen(
        [sys.executable, bridge_py, "unix-to-tcp", str(sock), str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        if bridge.poll() is not None or time.monotonic() > deadline:
            out.close()
            raise RuntimeError(f"the host side of the API bridge did not start; see {log}")
        time.sleep(0.05)
    inside = f"""set -e
ip link set lo up
mount --bind {private_tmp} /tmp
{sys.executable} {bridge_py} tcp-to-unix {port} {sock} &
for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && break; sleep 0.05; done
exec {binary} --metrics-bind-address=127.0.0.1:8080 --health-probe-bind-address=127.0.0.1:8081
"""
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "MY_POD_NAMESPACE": OPERATOR_NAMESPACE,
    }
    proc = subprocess.Popen(
        ["unshare", "--net", "--mount", "--", "bash", "-c", inside],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out.close()
    op = KubeflowOperator(proc, bridge, log)
    try:
        _await_ready(cluster, op, certs, timeout)
    except BaseException:
        op.stop()
        raise
    return op


def _await_ready(cluster: Cluster, op: KubeflowOperator, certs: Path, timeout: float) -> None:
    """Copy the serving certificate from the Secret into the private /tmp once the rotator
    has written it (what a kubelet's Secret volume would do), then wait for the
    PyTorchJob controller's workers to start."""
    start = op.log.stat().st_size if op.log.exists() else 0
    url = f"{cluster.apiserver_url}/api/v1/namespaces/{OPERATOR_NAMESPACE}/secrets/{WEBHOOK_SECRET}"
    written = False
    deadline = time.monotonic() + timeout
    with httpx.Client(verify=_tls(cluster), timeout=5) as http:
        while time.monotonic() < deadline:
            if op.proc.poll() is not None:
                raise RuntimeError(f"the Kubeflow operator exited; see {op.log}")
            if not written:
                data = http.get(url).json().get("data") or {}
                if data.get("tls.crt") and data.get("tls.key"):
                    import base64

                    # The key first: the rotator waits for tls.crt alone.
                    _write_atomic(certs / "tls.key", base64.b64decode(data["tls.key"]))
                    _write_atomic(certs / "tls.crt", base64.b64decode(data["tls.crt"]))
                    written = True
            with op.log.open("rb") as f:
                f.seek(start)
                tail = f.read().decode(errors="replace")
            if re.search(r"Starting workers.*pytorchjob", tail):
                return
            time.sleep(0.3)
    raise RuntimeError(
        f"the Kubeflow operator did not start its controllers in {timeout:.0f}s; see {op.log}"
    )


# -- the load ---------------------------------------------------------------------------------
@dataclass
class KubeflowResult:
    jobs: int
    workers: int
    submitted: float  # s to create every PyTorchJob
    all_pods_running: float  # s from the first create to every pod Running
    all_jobs_running: float  # s to every job's Running condition
    cleaned: float  # s from the delete to every pod gone
    peak_rss_mib: float | None
    # The operator's writes per job from create to all Running, by kind, counted by the
    # API server (benchmarks/writes.py).
    writes: dict[str, float] | None = None

    @property
    def pods(self) -> int:
        return self.jobs * self.workers


async def run_load(
    cluster: Cluster,
    namespace: str,
    jobs: int,
    workers: int,
    hpus: int = 1,
    in_flight: int = 32,
    limit_s: float = 900,
) -> dict[str, Any]:
    """Submit `jobs` PyTorchJobs (`in_flight` creates at a time) into a new namespace, time
    them to Running, delete them and time until every pod is gone; drop the namespace."""
    base = cluster.apiserver_url
    jobs_url = f"{base}/apis/{GROUP}/{KF_VERSION}/namespaces/{namespace}/{PLURAL}"
    pods_url = f"{base}/api/v1/namespaces/{namespace}/pods"
    limits = httpx.Limits(max_connections=in_flight + 2)
    async with httpx.AsyncClient(verify=_tls(cluster), timeout=60, limits=limits) as http:

        async def call(method: str, url: str, **kw: Any) -> dict[str, Any]:
            # Pooled connections idle for minutes while the jobs start may be closed by
            # then, and a loaded API server times a big LIST or collection DELETE out (504,
            # part-way for a DELETE): every call here is safe to send again.
            for attempt in range(5):
                try:
                    r = await http.request(method, url, **kw)
                except httpx.TransportError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5)
                    continue
                if r.status_code not in (429, 500, 503, 504) or attempt == 4:
                    break
                await asyncio.sleep(0.5)
            if r.is_error:
                raise RuntimeError(f"{method} {url}: {r.status_code} {r.text}")
            return dict(r.json())

        await call("POST", f"{base}/api/v1/namespaces", json={"metadata": {"name": namespace}})
        try:
            account = f"{base}/api/v1/namespaces/{namespace}/serviceaccounts/default"
            while True:  # pods are refused until the namespace's default account exists
                if (await http.get(account)).is_success:
                    break
                await asyncio.sleep(0.2)
            limit = asyncio.Semaphore(in_flight)

            async def submit(i: int) -> None:
                body = pytorchjob_manifest(f"job-{i:05d}", namespace, workers, hpus)
                async with limit:
                    await call("POST", jobs_url, json=body)

            async def totals() -> Any:
                return request_totals((await http.get(f"{base}/metrics")).text)

            before = await totals()
            t0 = time.monotonic()
            await asyncio.gather(*(submit(i) for i in range(jobs)))
            submitted = time.monotonic() - t0
            pods_at: float | None = None
            jobs_at: float | None = None
            # resourceVersion=0: served from the API server's watch cache, cheap to poll.
            cached = {"resourceVersion": "0", "labelSelector": JOB_NAME_LABEL}
            while pods_at is None or jobs_at is None:
                if time.monotonic() - t0 > limit_s:
                    raise TimeoutError(f"PyTorchJobs not all Running after {limit_s:.0f}s")
                await asyncio.sleep(0.5)
                if pods_at is None:
                    items = (await call("GET", pods_url, params=cached))["items"]
                    running = sum(1 for p in items if p.get("status", {}).get("phase") == "Running")
                    if running == jobs * workers:
                        pods_at = time.monotonic() - t0
                        print(f"all {running} pods Running at {pods_at:.1f} s", file=sys.stderr)
                if jobs_at is None:
                    listed = await call("GET", jobs_url, params={"resourceVersion": "0"})
                    if sum(1 for j in listed["items"] if job_running(j)) == jobs:
                        jobs_at = time.monotonic() - t0
                        print(f"all {jobs} jobs Running at {jobs_at:.1f} s", file=sys.stderr)
            assert pods_at is not None and jobs_at is not None
            writes = controller_writes(before, await totals(), GROUP, PLURAL).per(jobs)
            t1 = time.monotonic()
            await call("DELETE", jobs_url, json={"propagationPolicy": "Background"})
            while True:
                if not (await call("GET", pods_url, params=cached))["items"]:
                    break
                if time.monotonic() - t1 > limit_s:
                    raise TimeoutError(f"pods left {limit_s:.0f}s after deleting the jobs")
                await asyncio.sleep(0.5)
            cleaned = time.monotonic() - t1
        finally:
            await http.delete(f"{base}/api/v1/namespaces/{namespace}")
            # Gone before the next run counts its writes (benchmarks/writes.py).
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if (await http.get(f"{base}/api/v1/namespaces/{namespace}")).status_code == 404:
                    break
                await asyncio.sleep(0.5)
    return {
        "submitted": submitted,
        "all_pods_running": pods_at,
        "all_jobs_running": jobs_at,
        "cleaned": cleaned,
        "writes": writes,
    }


def run_kubeflow(
    cluster: Cluster,
    jobs: int,
    workers: int,
    hpus: int = 1,
    *,
    in_flight: int = 32,
    timeout: float = 900,
    log: Path | None = None,
) -> KubeflowResult:
    """One side-by-side run: start the Kubeflow operator on `cluster`, put `jobs` x `workers`
    PyTorchJob pods through it, stop it. The caller checks the cluster has the HPUs."""
    log = log or cluster.dir / "logs" / "bench-kubeflow-operator.log"
    op = start_kubeflow(cluster, log)
    try:
        ns = f"bench-kf-{uuid.uuid4().hex[:6]}"
        r = asyncio.run(run_load(cluster, ns, jobs, workers, hpus, in_flight, timeout))
        rss = op.peak_rss_mib()
    finally:
        op.stop()
    return KubeflowResult(jobs=jobs, workers=workers, peak_rss_mib=rss, **r)


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m gaudi_devtools.benchmarks.kubeflow",
        description=f"Jobs through the Kubeflow Training Operator {VERSION} on a local cluster.",
    )
    p.add_argument("--cluster", default="gaudi3", help="local cluster name (gaudi3 cluster up)")
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--hpus-per-worker", type=int, default=1, choices=(1, 2, 4, 8))
    p.add_argument("--timeout", type=float, default=900)
    a = p.parse_args(argv)
    c = Cluster(a.cluster)
    if not c.healthy():
        raise SystemExit(f"cluster {a.cluster!r} is not up: gaudi3 cluster up --name {a.cluster}")
    need = a.jobs * a.workers * a.hpus_per_worker
    s = c.settings
    have = s.gaudi_nodes * s.hpus_per_node if s else 0
    if need > have:
        raise SystemExit(
            f"{need} HPUs needed, the cluster has {have}: --gaudi-nodes {-(-need // 8)}"
        )
    r = run_kubeflow(c, a.jobs, a.workers, a.hpus_per_worker, timeout=a.timeout)
    rss = f"{r.peak_rss_mib:.0f} MiB" if r.peak_rss_mib else "n/a"
    load = f"{r.jobs} PyTorchJobs x {r.workers} workers ({r.pods} pods)"
    print(f"Kubeflow Training Operator {VERSION}: {load}")
    print(f"  jobs submitted (API, 32 at a time)  {r.submitted:8.1f} s")
    print(f"  all pods Running                    {r.all_pods_running:8.1f} s")
    print(f"  all jobs Running                    {r.all_jobs_running:8.1f} s")
    print(f"  pods to Running per second          {r.pods / r.all_pods_running:8.1f}")
    print(f"  all pods gone after delete          {r.cleaned:8.1f} s")
    print(f"  operator peak RSS                   {rss:>10}")
    print(json.dumps({**r.__dict__, "pods": r.pods}))


if __name__ == "__main__":
    main()
