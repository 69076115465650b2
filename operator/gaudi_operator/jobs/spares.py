"""Warm spares (spec.workers.spares), pure: which pod holds each worker index, which spare
takes a lost worker's index, and which spares to start or stop.

A spare is a worker's pod started outside the world (`manifests.spare_pod_manifest`): its
launcher imports Python, torch and the model and waits. When a worker pod is lost (deleted,
evicted, failed, its node dead) and failover has written it off, a warm spare takes its
index at once: one label patch (`manifests.promotion_patch`), no pod scheduled, pulled or
started. The labels are the record, so the decision is level-based: the next pass sees the
spare at that index and `failover.inplace` re-forms the world with it (state from a
surviving replica). The pool is refilled once every worker of the world has a node again,
so a spare never takes the place a worker is waiting for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gaudi_operator import api
from gaudi_operator.jobs.observation import WorkerPod
from gaudi_train import control_protocol as protocol
from gaudi_train.control_protocol import LauncherStatus


@dataclass
class SparePlan:
    promote: list[tuple[WorkerPod, int]] = field(default_factory=list)  # (spare, index)
    create: list[int] = field(default_factory=list)  # spare numbers (`api.spare_pod_name`)
    delete: list[WorkerPod] = field(default_factory=list)


def holders(job_name: str, workers: Iterable[WorkerPod], generation: int) -> dict[int, WorkerPod]:
    """The pod that holds each worker index of the generation. A live pod wins over one that
    finished or is being deleted (a spare took the index while the lost worker is still
    going), then the worker's own name, then the name: the same answer on every pass."""
    out: dict[int, WorkerPod] = {}
    for p in workers:
        if p.generation != generation or p.index is None:
            continue
        best = out.get(p.index)
        if best is None or _rank(job_name, p) < _rank(job_name, best):
            out[p.index] = p
    return out


def _rank(job_name: str, pod: WorkerPod) -> tuple[bool, bool, str]:
    own = pod.index is not None and pod.name == api.worker_pod_name(job_name, pod.index)
    return (not pod.live, not own, pod.name)


def warm(spare: WorkerPod, launcher: LauncherStatus | None, excluded: Iterable[str]) -> bool:
    """Ready to take an index now: its pod runs on a node the job still uses and its
    launcher says it waits warm (every worker process forked and imported)."""
    return (
        spare.live
        and spare.phase == "Running"
        and spare.ready
        and bool(spare.node)
        and spare.node not in set(excluded)
        and launcher is not None
        and launcher.spare
        and launcher.state == protocol.SPARE
    )


def plan_spares(
    job_name: str,
    wanted: int,
    spares: Sequence[WorkerPod],
    vacant: Sequence[int],
    launchers: Mapping[str, LauncherStatus],
    excluded: Sequence[str],
    placed: bool,
    taken_names: Iterable[str],
) -> SparePlan:
    """`vacant`: world indices without a live pod once failover wrote off the lost ones
    (empty while a restart backs off); `placed`: every worker of the world has a node."""
    out = SparePlan()
    ready = sorted((s for s in spares if warm(s, launchers.get(s.name), excluded)), key=_number)
    for index, spare in zip(sorted(vacant), ready, strict=False):
        out.promote.append((spare, index))
    promoted = {s.name for s, _ in out.promote}
    # A spare that failed, or sits on a node this job excluded, is replaced.
    gone = [s for s in spares if not s.deleting and (s.terminal or s.node in set(excluded))]
    kept = sorted(
        (s for s in spares if s.live and s not in gone and s.name not in promoted), key=_number
    )
    excess = kept[wanted:] if len(kept) > wanted else []
    out.delete = [*gone, *excess]
    missing = wanted - (len(kept) - len(excess))
    if placed and missing > 0:
        names = set(taken_names)
        number = 0
        while len(out.create) < missing:
            if api.spare_pod_name(job_name, number) not in names:
                out.create.append(number)
            number += 1
    return out


def _number(pod: WorkerPod) -> tuple[int, str]:
    """Spares in the order they were numbered (`<job>-spare-<n>`)."""
    tail = pod.name.rpartition("-")[2]
    return (int(tail) if tail.isdigit() else 1 << 30, pod.name)


def rendezvous(job_name: str, world: Iterable[WorkerPod]) -> str | None:
    """Where the world's store is when a spare holds index 0 (`host:port` for the
    launchers' decision): that launcher hosts the store on its pod IP, and the workers'
    PET_RDZV_ENDPOINT names `<job>-worker-0`, a pod that is gone. None while worker 0 is
    its own pod (the variable is right)."""
    first = next((p for p in world if p.index == 0 and p.live), None)
    if first is None or first.name == api.worker_pod_name(job_name, 0) or not first.ip:
        return None
    return f"{first.ip}:{api.RDZV_PORT}"
