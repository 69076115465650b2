"""What `kubectl gtj [JOB]` shows: the demo's live table (phase, restarts, world size,
step, loss, samples/s), for every job or for one job rank by rank, with its last failure
and last scale decision. Pure: job objects and readings in, rich renderables out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gaudi_kubectl.metrics import JobProgress
from gaudi_kubectl.text import age, number

COLUMNS = (
    "NAME",
    "PHASE",
    "WORKERS",
    "WORLD",
    "STEP",
    "LOSS",
    "SAMPLES/S",
    "RESTARTS",
    "LAST FAILURE",
    "LAST SCALE",
    "AGE",
)


@dataclass(frozen=True)
class JobRow:
    namespace: str
    name: str
    phase: str
    workers: str
    world_size: str
    step: str
    loss: str
    samples_per_second: str
    restarts: str
    last_failure: str
    last_scale: str
    age: str

    def cells(self) -> list[str]:
        return [
            self.name,
            self.phase,
            self.workers,
            self.world_size,
            self.step,
            self.loss,
            self.samples_per_second,
            self.restarts,
            self.last_failure,
            self.last_scale,
            self.age,
        ]


def _status(job: Mapping[str, Any]) -> Mapping[str, Any]:
    return job.get("status") or {}


def _spec(job: Mapping[str, Any]) -> Mapping[str, Any]:
    return job.get("spec") or {}


def workers(job: Mapping[str, Any]) -> str:
    """Ready/desired workers as the printer column has it (the spec's replicas before the
    operator wrote any status)."""
    st = _status(job)
    if st.get("workers"):
        return str(st["workers"])
    desired = (_spec(job).get("workers") or {}).get("replicas", "?")
    return f"{st.get('readyReplicas', 0)}/{desired}"


def short_pod(job_name: str, pod: str | None) -> str:
    """The pod without the job's name ("worker-1"): the name is already on the row."""
    if not pod:
        return "-"
    return pod.removeprefix(f"{job_name}-")


def last_failure(job: Mapping[str, Any], now: datetime, *, long: bool = False) -> str:
    f = _status(job).get("lastFailure")
    if not f:
        return "-"
    name = (job.get("metadata") or {}).get("name", "")
    parts = [str(f.get("reason") or "?")]
    pod = f.get("pod")
    where = (pod if long else short_pod(name, pod)) if pod else ""
    if where and long and f.get("node"):
        where += f" on {f['node']}"
    if where:
        parts.append(where)
    if f.get("exitCode") is not None:
        parts.append(f"exit {f['exitCode']}")
    text = " ".join(parts)
    if f.get("time"):
        text += f", {age(f['time'], now)} ago"
    if long and f.get("message"):
        text += f": {f['message']}"
    return text


def last_scale(job: Mapping[str, Any], now: datetime, *, long: bool = False) -> str:
    s = _status(job).get("lastScale")
    if not s:
        return "-"
    text = f"{s.get('from', '?')}→{s.get('to', '?')} {s.get('reason') or ''}".rstrip()
    if long and s.get("value") is not None:
        text += f" (value {float(s['value']):g})"
    if s.get("time"):
        text += f", {age(s['time'], now)} ago"
    return text


def last_decision(job: Mapping[str, Any], now: datetime) -> str:
    """The built-in autoscaler's latest decision, resize or not ("-" without one)."""
    d = (_status(job).get("autoscaling") or {}).get("lastDecision")
    if not d:
        return "-"
    current, chosen = d.get("current"), d.get("replicas")
    what = f"keep {chosen}" if current == chosen else f"{current}→{chosen}"
    detail = [str(d.get("reason") or "?")]
    if d.get("value") is not None:
        detail.append(f"value {float(d['value']):g}")
    text = f"{what} ({', '.join(detail)})"
    if d.get("time"):
        text += f", {age(d['time'], now)} ago"
    if d.get("message"):
        text += f": {d['message']}"
    return text


def job_row(job: Mapping[str, Any], progress: JobProgress, now: datetime) -> JobRow:
    meta, st = job.get("metadata") or {}, _status(job)
    return JobRow(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        phase=str(st.get("phase") or "-"),
        workers=workers(job),
        world_size=number(progress.world_size, "d"),
        step=number(progress.step, "d"),
        loss=number(progress.loss, ".4f"),
        samples_per_second=number(progress.samples_per_second, ".1f"),
        restarts=str(st.get("restarts", 0)),
        last_failure=last_failure(job, now),
        last_scale=last_scale(job, now),
        age=age(meta.get("creationTimestamp"), now),
    )


def _kubectl_table(headers: Sequence[str]) -> Table:
    """A table that looks like `kubectl get`: no box, upper-case headers, left-aligned."""
    table = Table(box=None, pad_edge=False, padding=(0, 3, 0, 0), header_style="bold")
    for h in headers:
        table.add_column(h, no_wrap=h not in ("LAST FAILURE", "LAST SCALE"), overflow="fold")
    return table


def jobs_table(rows: Sequence[JobRow], all_namespaces: bool = False) -> Table:
    table = _kubectl_table(("NAMESPACE", *COLUMNS) if all_namespaces else COLUMNS)
    for row in rows:
        table.add_row(*([row.namespace] if all_namespaces else []), *row.cells())
    return table


def ranks_table(progress: JobProgress, nodes: Mapping[str, str]) -> Table:
    """One row per rank (its pod and node), then the job's total throughput."""
    table = _kubectl_table(("RANK", "POD", "NODE", "STEP", "LOSS", "SAMPLES/S", "WORLD", "CKPT"))
    for r in progress.ranks:
        table.add_row(
            str(r.rank),
            r.pod or "-",
            nodes.get(r.pod or "", "-"),
            number(r.step, "d"),
            number(r.loss, ".4f"),
            number(r.samples_per_second, ".1f"),
            number(r.world_size, "d"),
            number(r.last_checkpoint_step, "d"),
        )
    if len(progress.ranks) > 1:
        table.add_row(
            "all",
            "",
            "",
            number(progress.step, "d"),
            number(progress.loss, ".4f"),
            number(progress.samples_per_second, ".1f"),
            number(progress.world_size, "d"),
            "",
            style="bold",
        )
    return table


def metrics_note(progress: JobProgress, source: str) -> str:
    """Where the numbers came from, and why some are missing."""
    if progress.problem:
        return f"{source}: {progress.problem}"
    if progress.endpoints:
        answered = progress.endpoints - len(progress.unreachable)
        text = f"{source}: {answered} of {progress.endpoints} endpoints answered"
        if progress.unreachable:
            shown = ", ".join(progress.unreachable[:3])
            more = len(progress.unreachable) - 3
            text += f" (no answer from {shown}{f' and {more} more' if more > 0 else ''})"
        return text
    if not progress.ranks:
        return f"{source}: no rank reports yet"
    return f"{source}: {len(progress.ranks)} ranks"


def job_detail(
    job: Mapping[str, Any],
    progress: JobProgress,
    nodes: Mapping[str, str],
    now: datetime,
    source: str,
) -> RenderableType:
    """One job: its phase and totals, its ranks, then its last failure and scale decision."""
    meta, spec, st = job.get("metadata") or {}, _spec(job), _status(job)
    hpus = spec.get("hpusPerWorker", "?")
    w = spec.get("workers") or {}
    bounds = ""
    if w.get("minReplicas") or w.get("maxReplicas"):
        low, high = w.get("minReplicas", w.get("replicas")), w.get("maxReplicas", w.get("replicas"))
        bounds = f" (min {low}, max {high})"
    head = Text.assemble(
        (f"gtj/{meta.get('name')}", "bold"),
        f" in {meta.get('namespace')}: ",
        (str(st.get("phase") or "no status yet"), "bold"),
        f", workers {workers(job)}{bounds}, {hpus} HPU{'s' if hpus != 1 else ''} each,"
        f" age {age(meta.get('creationTimestamp'), now)}",
    )
    reporting = [r for r in progress.ranks if r.samples_per_second is not None]
    summed = f" (sum of {len(reporting)} ranks)" if len(reporting) > 1 else ""
    totals = Text(
        f"world size {number(progress.world_size, 'd')}   step {number(progress.step, 'd')}   "
        f"loss {number(progress.loss, '.4f')}   "
        f"samples/s {number(progress.samples_per_second, '.1f')}{summed}"
        f"   restarts {st.get('restarts', 0)}"
    )
    facts = Table.grid(padding=(0, 3))
    facts.add_column(no_wrap=True)
    facts.add_column(overflow="fold")
    facts.add_row("last failure", last_failure(job, now, long=True))
    facts.add_row("last resize", last_scale(job, now, long=True))
    if (spec.get("autoscaling") or {}).get("enabled") or (st.get("autoscaling") or {}):
        facts.add_row("last decision", last_decision(job, now))
    facts.add_row("metrics", metrics_note(progress, source))
    parts: list[RenderableType] = [head, totals, Text("")]
    if progress.ranks:
        parts += [ranks_table(progress, nodes), Text("")]
    parts.append(facts)
    return Group(*parts)


def as_json(
    job: Mapping[str, Any], progress: JobProgress, nodes: Mapping[str, str], source: str
) -> dict[str, Any]:
    """`-o json`: the same facts for scripts, numbers as numbers (null when unmeasured)."""
    meta, st = job.get("metadata") or {}, _status(job)
    return {
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "phase": st.get("phase"),
        "workers": workers(job),
        "restarts": st.get("restarts", 0),
        "worldSize": progress.world_size,
        "step": progress.step,
        "loss": progress.loss,
        "samplesPerSecond": progress.samples_per_second,
        "ranks": [
            {
                "rank": r.rank,
                "pod": r.pod,
                "node": nodes.get(r.pod or ""),
                "step": r.step,
                "loss": r.loss,
                "samplesPerSecond": r.samples_per_second,
                "worldSize": r.world_size,
                "lastCheckpointStep": r.last_checkpoint_step,
            }
            for r in progress.ranks
        ],
        "lastFailure": st.get("lastFailure"),
        "lastScale": st.get("lastScale"),
        "lastDecision": (st.get("autoscaling") or {}).get("lastDecision"),
        "metrics": metrics_note(progress, source),
    }
