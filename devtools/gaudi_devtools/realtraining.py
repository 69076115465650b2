"""Real training on the real nodes, shared by the real-node tests, `gaudi3 benchmark
recovery` and `gaudi3 demo`: the training image, the GaudiTrainingJob they run, reading its
workers' logs, metrics and checkpoints, and finding a worker's launcher process on this
machine.

The checkpoint volume is a hostPath directory: both real nodes are this one machine, so
it is a volume both nodes share (on a real cluster: a ReadWriteMany claim).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gaudi_devtools.cluster.nodes import REAL_LABEL
from gaudi_devtools.cluster.realnodes import scrape_targets

GROUP = "gaudi.scalestarter.dev"
IMAGE = "gaudi3.local/gaudi-train-cpu:dev"
INTERVAL = 5  # checkpoint and log every 5 steps
TRAINER_UID = 10001  # the training image's user (training-image/Dockerfile)
STEP_LINE = re.compile(r"step (\d+) loss ([0-9.]+)")
WORLD_LINE = re.compile(r"global batch 16 = micro 8 x world (\d+) x accumulation (\d+)")
RESUME_LINE = re.compile(r"resumed from step (\d+)")
CHECKPOINT_LINE = re.compile(r"checkpoint of step (\d+) complete")
ROOT = Path(__file__).resolve().parents[2]
# The chart's tenant policy (charts/gaudi-operator/templates/admission-policy.yaml, and
# docs/security.md) refuses a template with hostNetwork or hostPath volumes unless the
# job's namespace carries these labels; the real-node job needs both (no pod network, a
# checkpoint directory on the host).
HOST_ACCESS_LABELS = {f"{GROUP}/allow-host-network": "true", f"{GROUP}/allow-host-path": "true"}


def training_image() -> Path:
    """The CPU training image's archive, built by hack/build-images.sh if its inputs
    changed (well under a second when they did not; minutes from nothing, its progress on
    stderr). Needs root, like the real nodes."""
    from gaudi_devtools.cluster.cluster import CLUSTERS

    build = subprocess.run(["bash", str(ROOT / "hack" / "build-images.sh"), "training-cpu"])
    if build.returncode != 0:
        raise RuntimeError("building the training image failed (hack/build-images.sh)")
    return CLUSTERS.parent / "images" / "gaudi-train-cpu.tar"


def allow_host_access(cluster: Any, ns: str) -> None:
    """Label `ns` so that the chart's tenant policy admits the real-node job there: always,
    whether the policy is installed now or later (the labels alone grant nothing)."""
    labels = [f"{k}={v}" for k, v in HOST_ACCESS_LABELS.items()]
    cluster.kubectl("label", "namespace", ns, *labels, "--overwrite")


def job(
    name: str,
    checkpoints: Path,
    *,
    interval: int = INTERVAL,
    log_every: int = INTERVAL,
    failure_policy: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    max_steps: int = 100000,
    spares: int = 0,
) -> dict[str, Any]:
    """2 workers of 1 "HPU" on the real nodes, one per node, checkpoints on the host;
    `env` is added to the worker container's environment; `spares` warm spares (each needs
    a real node of its own too). Its namespace needs `allow_host_access` where the chart's
    tenant policy is installed."""
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "GaudiTrainingJob",
        "metadata": {"name": name},
        "spec": {
            "image": IMAGE,
            "args": [
                "--device",
                "cpu",
                "--max-steps",
                str(max_steps),
                "--log-every",
                str(log_every),
            ],
            "hpusPerWorker": 1,
            "workers": {"replicas": 2, "minReplicas": 1, "maxReplicas": 2, "spares": spares},
            "batch": {"globalBatchSize": 16, "microBatchSize": 8},
            "checkpoint": {"intervalSteps": interval},
            "failurePolicy": failure_policy or {"maxRestarts": 10},
            "template": {
                "spec": {
                    # Real nodes have no pod network: host networking, cluster DNS.
                    "hostNetwork": True,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "nodeSelector": {REAL_LABEL: "true"},
                    "terminationGracePeriodSeconds": 10,
                    # Pods of one node share its IP and ports: one worker per node.
                    "affinity": {
                        "podAntiAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": {"matchLabels": {f"{GROUP}/job-name": name}},
                                }
                            ]
                        }
                    },
                    "volumes": [
                        {
                            "name": "checkpoints",
                            "hostPath": {"path": str(checkpoints), "type": "Directory"},
                        }
                    ],
                    "containers": [
                        {
                            "name": "worker",
                            "imagePullPolicy": "Never",
                            # The operator's per-HPU defaults (4 CPUs, 16 GiB, huge pages)
                            # do not fit this machine; the tiny model needs little.
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "512Mi"},
                                "limits": {"hugepages-2Mi": "0"},
                            },
                        }
                    ],
                }
            },
        },
    }
    if env:
        container = body["spec"]["template"]["spec"]["containers"][0]
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return body


def pod_logs(
    cluster: Any, ns: str, job_name: str, generation: int = 0, *, stamps: bool = False
) -> dict[str, str]:
    """The log of each worker pod of one restart generation, by pod name; with `stamps`,
    each line starts with the container runtime's RFC 3339 (nanosecond) time of it."""
    selector = f"{GROUP}/job-name={job_name},{GROUP}/generation={generation}"
    pods = cluster.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "name").stdout.split()
    extra = ["--timestamps"] if stamps else []
    return {
        p.removeprefix("pod/"): cluster.kubectl("logs", p, "-n", ns, *extra, check=False).stdout
        for p in pods
    }


def logs(cluster: Any, ns: str, job_name: str, generation: int = 0) -> str:
    """The logs of the workers of one restart generation (rank 0, which logs the
    steps, may be in either pod)."""
    return "\n".join(pod_logs(cluster, ns, job_name, generation).values())


def steps(cluster: Any, ns: str, job_name: str, generation: int = 0) -> list[tuple[int, float]]:
    """(step, loss) as rank 0 logged them, in step order."""
    found = STEP_LINE.findall(logs(cluster, ns, job_name, generation))
    return sorted((int(s), float(loss)) for s, loss in found)


def stamped_lines(text: str) -> list[tuple[float, str]]:
    """(epoch seconds, line) of `kubectl logs --timestamps` output, in time order."""
    out = []
    for line in text.splitlines():
        stamp, _, rest = line.partition(" ")
        try:
            out.append((parse_time(stamp), rest))
        except ValueError:
            continue
    return sorted(out, key=lambda x: x[0])


def parse_time(stamp: str) -> float:
    """Epoch seconds of a UTC RFC 3339 time ("...T21:40:01Z" as the API writes it,
    "...T21:40:01.123456789Z" as the container runtime does), its fraction kept."""
    head, _, frac = stamp.removesuffix("Z").partition(".")
    base = datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def checkpoint_steps(root: Path) -> list[int]:
    return sorted(
        int(p.name.split("-")[1]) for p in root.glob("step-*") if (p / "COMPLETE.json").exists()
    )


def launcher_pid(ns: str, job_name: str, index: int, pod: str | None = None) -> int | None:
    """The host PID of a worker container's launcher (its PID 1, `gaudi3-train`): worker
    `index`'s, or the pod `pod`'s (operator-managed recovery sets GAUDI3_POD_NAME; a spare
    that took an index has no GAUDI3_WORKER_INDEX)."""
    want = {f"GAUDI3_JOB_NAME={job_name}".encode(), f"GAUDI3_NAMESPACE={ns}".encode()}
    want.add(f"GAUDI3_POD_NAME={pod}".encode() if pod else f"GAUDI3_WORKER_INDEX={index}".encode())
    found: dict[int, int] = {}  # pid: parent pid
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = set((entry / "environ").read_bytes().split(b"\0"))
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if want <= env and any(part.endswith(b"gaudi3-train") for part in cmd[:2]):
            found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    # Workers forked by the launcher (gaudi_train.prefork) show its command line too.
    roots = [pid for pid, parent in found.items() if parent not in found]
    return roots[0] if len(roots) == 1 else None


def holder(cluster: Any, ns: str, job_name: str, index: int) -> str | None:
    """The name of the live pod that holds worker `index` (a spare keeps its own name
    after it took an index)."""
    sel = f"{GROUP}/job-name={job_name},{GROUP}/worker-index={index}"
    out = cluster.kubectl("get", "pods", "-n", ns, "-l", sel, "-o", "json", check=False)
    items = json.loads(out.stdout)["items"] if out.returncode == 0 else []
    live = [p for p in items if not p["metadata"].get("deletionTimestamp")]
    return str(live[0]["metadata"]["name"]) if live else None


def worker_pids(launcher: int) -> list[int]:
    """The training processes of a launcher under operator-managed recovery: forked by
    its fork server, named `gaudi3-worker` (gaudi_train.forkserver)."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        pid = int(stat.parent.name)
        names[pid] = text[text.index("(") + 1 : text.rindex(")")]
        children.setdefault(int(text.rsplit(")", 1)[1].split()[1]), []).append(pid)
    found, todo = [], [launcher]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            if names.get(child) == "gaudi3-worker":
                found.append(child)
    return sorted(found)


# gaudi_train.managed's lines: its world broke, the operator's decision came.
WAITING_LINE = "-> waiting: world broke"
DECISION_LINE = "decision: restart in place at generation"
# The launcher's line for each of its ranks after an in-place restart (gaudi_train.managed).
INPLACE_RESUME_LINE = re.compile(
    r"rank (\d+) resumed from (peer rank \d+|checkpoint) at step (\d+)"
)


@dataclass(frozen=True)
class InPlaceTrial:
    """A training process killed in a healthy pod, and the world re-formed in its pods."""

    kill: float  # Unix time of the SIGKILL
    last_before: int  # the last step rank 0 logged before it
    resumed_from: int
    source: str  # "peer rank N" or "checkpoint"
    first_step: float  # Unix time rank 0 logged the first new step (container runtime's stamp)
    first_loss: str  # as logged: compared to the last digit
    # Launchers' milestones, when their lines are there: the first launcher that stopped
    # waiting for its world (detection), the first that got the operator's decision.
    waiting: float | None = None
    decided: float | None = None
    resumed: float | None = None

    @property
    def phases(self) -> dict[str, float | None]:
        """kill -> a launcher waits -> the decision arrives -> resumed -> first new step."""

        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else b - a

        return {
            "detect": span(self.kill, self.waiting),
            "decide": span(self.waiting, self.decided),
            "re-form": span(self.decided, self.resumed),
            "first step": span(self.resumed, self.first_step),
        }

    @property
    def seconds(self) -> float:
        return self.first_step - self.kill

    @property
    def redone(self) -> int:
        return max(0, self.last_before - self.resumed_from)


def kill_training_process(cluster: Any, ns: str, job_name: str, index: int) -> tuple[float, int]:
    """SIGKILL the training process of worker `index` (not its launcher); (when, the last
    step rank 0 logged before it)."""
    launcher = launcher_pid(ns, job_name, index)
    victims = worker_pids(launcher) if launcher is not None else []
    if len(victims) != 1:
        raise RuntimeError(f"no single training process of worker {index}: {victims}")
    before = steps(cluster, ns, job_name)
    at = time.time()
    os.kill(victims[0], signal.SIGKILL)
    return at, max((s for s, _ in before), default=0)


def in_place_trial(
    cluster: Any,
    ns: str,
    job_name: str,
    killed: tuple[float, int],
    resumes_before: int,
    generation: int = 0,
    without: str | None = None,
) -> InPlaceTrial | None:
    """The trial once the world of restart `generation` re-formed (more than
    `resumes_before` resume lines of operator-managed launchers in its pods, the pod
    `without` left out: a deleted one, whose log goes with it) and rank 0 logged a step
    after it; None until then."""
    at, last = killed
    texts = pod_logs(cluster, ns, job_name, generation, stamps=True)
    lines = sorted(x for pod, text in texts.items() if pod != without for x in stamped_lines(text))
    resumed = [(t, m) for t, ln in lines if (m := INPLACE_RESUME_LINE.search(ln))]
    if len(resumed) <= resumes_before:
        return None
    t0, m = resumed[resumes_before]
    step = int(m.group(3))
    new = [
        (t, s)
        for t, ln in lines
        if t >= t0 and (s := STEP_LINE.search(ln)) and int(s.group(1)) > step
    ]
    if not new:
        return None
    t1, s = new[0]
    waiting = next((t for t, ln in lines if t >= at and WAITING_LINE in ln), None)
    decided = next((t for t, ln in lines if t >= at and DECISION_LINE in ln), None)
    return InPlaceTrial(at, last, step, m.group(2), t1, s.group(2), waiting, decided, t0)


def resume_count(cluster: Any, ns: str, job_name: str) -> int:
    return len(INPLACE_RESUME_LINE.findall(logs(cluster, ns, job_name, 0)))


@dataclass(frozen=True)
class WorldProgress:
    """What a training world's ranks report on their metrics endpoints."""

    ranks: int  # endpoints that answered
    world_size: int | None = None
    step: int | None = None
    loss: float | None = None
    samples_per_second: float | None = None


def world_progress(texts: Iterable[str]) -> WorldProgress:
    """Fold the ranks' /metrics texts the way the operator reads them: throughput summed
    over ranks (the autoscaler's query), the highest step and world size, the loss (every
    rank holds the same all-reduced mean)."""
    found: dict[str, list[float]] = {}
    ranks = 0
    for text in texts:
        ranks += 1
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found.setdefault(sample.name, []).append(sample.value)

    def top(name: str) -> float | None:
        return max(found[name]) if name in found else None

    world, step = top("gaudi3_train_world_size"), top("gaudi3_train_step")
    sps = found.get("gaudi3_train_samples_per_second")
    # Before its first step a world reports the step it resumed from, but its loss and
    # throughput gauges still hold their initial 0: not a measurement.
    stepped = bool(top("gaudi3_train_samples_total"))
    return WorldProgress(
        ranks=ranks,
        world_size=None if world is None else int(world),
        step=None if step is None else int(step),
        loss=top("gaudi3_train_loss") if stepped else None,
        samples_per_second=sum(sps) if sps and stepped else None,
    )


def scrape_world(cluster: Any, ns: str, job_name: str, timeout: float = 2) -> WorldProgress:
    """Scrape the job's running workers' metrics endpoints (pod IP and the
    prometheus.io/port annotation, as Prometheus finds them) from this machine."""
    selector = f"{GROUP}/job-name={job_name}"
    out = cluster.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json", check=False)
    if out.returncode != 0:
        return WorldProgress(ranks=0)
    texts = []
    for group in scrape_targets(json.loads(out.stdout)["items"]):
        path = group["labels"].get("__metrics_path__", "/metrics")
        for target in group["targets"]:
            try:
                # Loopback only: never through a proxy from the environment.
                r = httpx.get(f"http://{target}{path}", timeout=timeout, trust_env=False)
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                texts.append(r.text)
    return world_progress(texts)
