"""`kubectl gtj why JOB`: why a job is Pending, Restarting or Failed, and what to do, on one
screen. Pure: the job, its pods and the recent events in (as the API serves them), an
Explanation out; `render` turns it into text.

The reasons are the operator's (docs/failover.md, docs/architecture.md "Conditions") and
the kubelet's and scheduler's own (a pod's waiting reason, its PodScheduled message).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.text import Text

from gaudi_kubectl import names
from gaudi_kubectl.text import age, duration, parse_time

Obj = Mapping[str, Any]

# What to do about the reason a worker was lost (status.lastFailure.reason, the
# Restarting condition's reason): the operator's failure reasons (FailureReason).
FAILURE_FIXES = {
    "Error": "A worker's program exited non-zero: read its log (`kubectl logs POD -n NS`; "
    "a replacement that fails the same way logs the same error).",
    "OOMKilled": "A worker ran out of memory: raise the memory limit in spec.resources "
    "(per worker), or lower batch.microBatchSize.",
    "Evicted": "The kubelet evicted a worker (node pressure: memory, disk): "
    "`kubectl describe node NODE` shows which.",
    "Preempted": "A higher-priority pod took the worker's place: give the job a higher "
    "spec.scheduling.priorityClassName, or make room.",
    "NodeLost": "A worker's node went NotReady past failurePolicy.nodeFailureGraceSeconds, "
    "or vanished; replacements avoid it (status.excludedNodes). Check the node: "
    "`kubectl describe node NODE`.",
    "HPUUnhealthy": "An HPU the worker held turned unhealthy; replacements avoid the node. "
    "Have the card checked (`hl-smi` on the node).",
    "ScaleOutLinkDown": "A scale-out NIC port of a worker's card went down; replacements "
    "avoid the node. Check the node's links and switch ports.",
    "Stalled": "No training step for failurePolicy.stallTimeoutSeconds: a hung collective, "
    "a stuck data loader or a dead peer. Read the workers' logs; raise stallTimeoutSeconds "
    "only if steps are legitimately that slow (e.g. the first graph compile).",
    "PlacementTimeout": "Only part of the world could be placed for "
    "failurePolicy.placementTimeoutSeconds, so the job gave its HPUs back and tries again "
    "(not counted against maxRestarts). Free HPUs, lower spec.workers.replicas, or use "
    "scheduling.gang.",
    "NoFeasibleNode": "No node can take the replacement workers (the message quotes the "
    "scheduler). Repair or add nodes; nodes in status.excludedNodes stay excluded for this "
    "job.",
}

# A worker container waiting with one of these reasons will not start by itself.
WAITING_FIXES = {
    "ImagePullBackOff": "The node cannot pull the image: check spec.image (registry, name, "
    "tag) and that the nodes reach the registry; a private registry needs "
    "spec.template.spec.imagePullSecrets.",
    "ErrImagePull": "The node cannot pull the image: check spec.image (registry, name, "
    "tag) and that the nodes reach the registry; a private registry needs "
    "spec.template.spec.imagePullSecrets.",
    "InvalidImageName": "spec.image is not a valid image reference.",
    "CreateContainerConfigError": "Something the template refers to is missing (the "
    "message names it, e.g. a Secret or ConfigMap): create it or fix spec.template.",
    "CreateContainerError": "The container runtime could not create the container: the "
    "message says why.",
    "RunContainerError": "The container runtime could not start the container: the message "
    "says why.",
    "CrashLoopBackOff": "The container keeps exiting: `kubectl logs POD -n NS --previous`.",
}
STARTING = ("ContainerCreating", "PodInitializing")

EXIT_CODES = {
    137: "killed by SIGKILL: out of memory, or killed from outside",
    143: "terminated by SIGTERM",
    139: "segmentation fault",
    134: "aborted (SIGABRT)",
}


@dataclass(frozen=True)
class Finding:
    """One thing that explains the job's state: what, the evidence, what to do."""

    title: str
    detail: str = ""
    fix: str = ""
    severity: str = "problem"  # problem | warning | info


@dataclass(frozen=True)
class PodState:
    name: str
    phase: str
    node: str
    state: str  # one short phrase
    ok: bool


@dataclass(frozen=True)
class Explanation:
    name: str
    namespace: str
    phase: str
    ok: bool  # Running or Succeeded with nothing to look at
    summary: str
    findings: tuple[Finding, ...] = ()
    pods: tuple[PodState, ...] = ()
    events: tuple[str, ...] = ()


# --- reading the objects ------------------------------------------------------------------


def condition(job: Obj, type_: str) -> Obj | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def is_true(c: Obj | None) -> bool:
    return c is not None and c.get("status") == "True"


def unschedulable_reason(message: str, excluded_nodes: Sequence[str] = ()) -> str:
    """The Scheduled condition's reason for a scheduler message (the operator's rule, for
    pods the operator has not summed up yet)."""
    if f"Insufficient {names.GAUDI_RESOURCE}" in message:
        return "InsufficientHPUs"
    if "untolerated taint" in message:
        return "UntoleratedTaints"
    if "node affinity/selector" in message:
        return "ExcludedNodes" if excluded_nodes else "NodeSelectorMismatch"
    return "Unschedulable"


def _exit(code: Any) -> str:
    if not isinstance(code, int):
        return ""
    hint = EXIT_CODES.get(code)
    return f"exit code {code}" + (f" ({hint})" if hint else "")


def pod_state(pod: Obj, now: datetime) -> PodState:
    """One phrase for where a worker pod is, and whether that is fine."""
    meta, spec, st = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    name, phase, node = (
        meta.get("name", "?"),
        st.get("phase") or "Unknown",
        spec.get("nodeName") or "",
    )

    def out(state: str, ok: bool = False) -> PodState:
        return PodState(name, phase, node, state, ok)

    if meta.get("deletionTimestamp"):
        return out("being deleted")  # its timestamp is when the grace period ends
    for c in st.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return out(f"cannot be placed: {c.get('message') or c.get('reason') or ''}".rstrip())
    if phase == "Pending" and not node:
        return out(
            f"waiting for the scheduler ({spec.get('schedulerName') or 'default-scheduler'})"
        )
    statuses = [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") not in (None, *STARTING):
            msg = f": {waiting['message']}" if waiting.get("message") else ""
            return out(f"{waiting['reason']}{msg}")
    for cs in statuses:
        term = (cs.get("state") or {}).get("terminated")
        if term and term.get("exitCode", 0) != 0:
            what = ", ".join(
                x for x in (_exit(term.get("exitCode")), term.get("reason") or "") if x
            )
            msg = f": {term['message'].strip()}" if term.get("message") else ""
            return out(f"{cs.get('name')} {what}{msg}")
    if phase == "Failed":
        return out(f"Failed: {st.get('reason') or ''} {st.get('message') or ''}".strip())
    if phase == "Succeeded":
        return out("exited 0", ok=True)
    if phase == "Pending":
        for cs in statuses:
            waiting = (cs.get("state") or {}).get("waiting")
            if waiting:
                return out(f"{waiting.get('reason')} on {node}")
        return out(f"starting on {node}")
    if phase == "Running":
        ready = all(cs.get("ready") for cs in statuses) if statuses else False
        return out(f"running on {node}" if ready else f"running on {node}, not ready", ok=ready)
    return out(phase)


def event_line(event: Obj, now: datetime, others: int = 0) -> str:
    """One event as `kubectl describe` shows it; `others`: alike events of other objects
    folded into it (fifty unplaceable workers make one line, not fifty)."""
    obj = event.get("involvedObject") or event.get("regarding") or {}
    count = event.get("count") or (event.get("series") or {}).get("count") or 1
    times = f" (x{count})" if count > 1 else ""
    kind = "gtj" if obj.get("kind") == names.KIND else str(obj.get("kind", "")).lower()
    also = f" (+{others} more)" if others else ""
    message = str(event.get("message") or event.get("note") or "").strip()
    when = duration((now - _event_time(event)).total_seconds())
    return (
        f"{when:>5}  {event.get('type', '')}  {event.get('reason', '')}{times}  "
        f"{kind}/{obj.get('name', '')}{also}: {message}"
    )


def _event_time(event: Obj) -> datetime:
    for when in (
        event.get("lastTimestamp"),
        (event.get("series") or {}).get("lastObservedTime"),
        event.get("eventTime"),
        event.get("firstTimestamp"),
        (event.get("metadata") or {}).get("creationTimestamp"),
    ):
        t = parse_time(when)
        if t:
            return t
    return datetime.min.replace(tzinfo=UTC)


def recent_events(events: Sequence[Obj], now: datetime, limit: int = 6) -> tuple[str, ...]:
    """The newest events last, as `kubectl describe` lists them: alike events of
    several objects (same type, reason, message, kind) folded into the newest, and
    warnings kept over normal ones when there are more than fit."""
    groups: dict[tuple[str, str, str, str], list[Obj]] = {}
    for e in sorted(events, key=_event_time):
        obj = e.get("involvedObject") or e.get("regarding") or {}
        key = (
            str(e.get("type")),
            str(e.get("reason")),
            str(e.get("message") or e.get("note") or ""),
            str(obj.get("kind")),
        )
        groups.setdefault(key, []).append(e)
    newest = sorted(
        ((alike[-1], len(alike) - 1) for alike in groups.values()), key=lambda x: _event_time(x[0])
    )
    chosen = newest[-limit:]
    warnings = [x for x in newest if x[0].get("type") == "Warning"]
    if len(newest) > limit and warnings:
        keep = {id(x[0]) for x in warnings[-limit:]}
        rest = [x for x in reversed(newest) if id(x[0]) not in keep][: max(limit - len(keep), 0)]
        keep |= {id(x[0]) for x in rest}
        chosen = [x for x in newest if id(x[0]) in keep]
    return tuple(event_line(e, now, others) for e, others in chosen)


# --- deciding what to say -----------------------------------------------------------------


def _fix_for_failure(reason: str, ns: str) -> str:
    fix = FAILURE_FIXES.get(reason, "")
    return fix.replace("-n NS", f"-n {ns}")


def _last_failure(job: Obj, now: datetime) -> Finding | None:
    f = (job.get("status") or {}).get("lastFailure")
    if not f:
        return None
    reason = str(f.get("reason") or "?")
    where = f.get("pod") or "a worker"
    if f.get("node"):
        where += f" on node {f['node']}"
    bits = [
        x
        for x in (
            _exit(f.get("exitCode")),
            f"{age(f.get('time'), now)} ago" if f.get("time") else "",
        )
        if x
    ]
    detail = f"{where}" + (f", {', '.join(bits)}" if bits else "")
    if f.get("message"):
        detail += f": {f['message']}"
    ns = (job.get("metadata") or {}).get("namespace", "")
    fix = _fix_for_failure(reason, ns)
    if f.get("pod"):
        fix = fix.replace("POD", str(f["pod"]))
    if f.get("node"):
        fix = fix.replace("NODE", str(f["node"]))
    return Finding(f"Last failure: {reason}", detail, fix)


def _scheduling_finding(job: Obj, pods: Sequence[PodState]) -> Finding | None:
    """Workers the scheduler cannot place: the Scheduled condition, or the pods' own
    PodScheduled message before the operator summed them up."""
    meta, spec, st = job.get("metadata") or {}, job.get("spec") or {}, job.get("status") or {}
    sched = condition(job, "Scheduled")
    stuck = [p for p in pods if p.state.startswith("cannot be placed")]
    if sched is not None and sched.get("status") == "False":
        reason, message = (
            str(sched.get("reason") or "Unschedulable"),
            str(sched.get("message") or ""),
        )
    elif stuck:
        said = stuck[0].state.removeprefix("cannot be placed: ")
        reason = unschedulable_reason(said, st.get("excludedNodes") or ())
        message = (
            f"{len(stuck)} of {len(pods)} workers cannot be placed; the scheduler says: {said}"
        )
    else:
        return None
    replicas = int((spec.get("workers") or {}).get("replicas") or 1)
    hpus = int(spec.get("hpusPerWorker") or 8)
    name = meta.get("name", "JOB")
    template = (spec.get("template") or {}).get("spec") or {}
    if reason == "InsufficientHPUs":
        title = "Not enough free HPUs: the workers do not fit on the nodes"
        fix = (
            f"The job asks for {replicas} workers x {hpus} {names.GAUDI_RESOURCE} = "
            f"{replicas * hpus} HPUs at once. Lower spec.workers.replicas "
            f"(`kubectl scale gtj {name} --replicas=N`; hpusPerWorker is immutable: "
            "re-create the job to change it), free HPUs other jobs hold (`kubectl gtj -A`), "
            "or add Gaudi nodes."
        )
    elif reason == "NodeSelectorMismatch":
        selector = template.get("nodeSelector") or {}
        wanted = ", ".join(f"{k}={v}" for k, v in selector.items())
        title = "No node matches the workers' node selector or affinity"
        fix = (
            (f"spec.template.spec.nodeSelector asks for {wanted}. " if wanted else "")
            + "Fix spec.template.spec.nodeSelector or affinity and apply the job again, "
            "or label the nodes that should run it (`kubectl label node NODE KEY=VALUE`)."
        )
    elif reason == "ExcludedNodes":
        excluded = ", ".join(st.get("excludedNodes") or []) or "-"
        title = "The only nodes that would fit failed this job before and are excluded"
        fix = (
            f"status.excludedNodes: {excluded}. Repair or add nodes; the exclusion belongs "
            "to this job, so a job re-created after the repair may use them again."
        )
    elif reason == "UntoleratedTaints":
        title = "The nodes carry taints the workers do not tolerate"
        fix = (
            "Add a matching toleration to spec.template.spec.tolerations, or remove the "
            "taint (`kubectl describe node NODE` shows it)."
        )
    else:
        title = "The scheduler cannot place the workers"
        fix = (
            "The scheduler's message names what is missing (CPU, memory, hugepages-2Mi, a "
            "volume, a port): lower spec.resources or make room."
        )
    return Finding(f"{title} (Scheduled=False, {reason})", message, fix)


def _waiting_findings(job: Obj, pods: Sequence[PodState]) -> list[Finding]:
    """Containers stuck on a reason the kubelet will not get past alone (one finding per
    reason: fifty workers with the same bad image are one problem)."""
    ns = (job.get("metadata") or {}).get("namespace", "")
    seen: dict[str, list[PodState]] = {}
    for p in pods:
        reason = p.state.split(":", 1)[0]
        if reason in WAITING_FIXES:
            seen.setdefault(reason, []).append(p)
    out = []
    for reason, stuck in seen.items():
        first = stuck[0]
        others = f" (and {len(stuck) - 1} more)" if len(stuck) > 1 else ""
        fix = WAITING_FIXES[reason].replace("POD", first.name).replace("-n NS", f"-n {ns}")
        image = (job.get("spec") or {}).get("image")
        if reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName") and image:
            fix = f"spec.image is {image}. " + fix
        out.append(
            Finding(f"Workers cannot start: {reason}", f"{first.name}{others}: {first.state}", fix)
        )
    return out


LOG_PODS = 2  # failed workers whose log tail `why` shows
LOG_LINES = 5


def failed_containers(pods: Sequence[Obj]) -> list[tuple[str, str]]:
    """(pod, container) of the workers whose container exited non-zero and still exist:
    their last log lines usually say why (the first LOG_PODS of them, by index)."""
    out = []
    for pod in sorted(pods, key=lambda p: _index((p.get("metadata") or {}).get("name", ""))):
        meta, st = pod.get("metadata") or {}, pod.get("status") or {}
        for cs in st.get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("exitCode", 0) != 0 and not meta.get("deletionTimestamp"):
                out.append((str(meta.get("name")), str(cs.get("name"))))
                break
    return out[:LOG_PODS]


def _failed_workers(pods: Sequence[PodState], logs: Mapping[str, str]) -> Finding | None:
    """The workers that exited non-zero, with the last lines of their logs."""
    exited = [p for p in pods if "exit code" in p.state or p.phase == "Failed"]
    if not exited:
        return None
    lines = []
    for p in exited[:3]:
        lines.append(f"{p.name}: {p.state}")
        tail = [line for line in (logs.get(p.name) or "").splitlines() if line.strip()]
        lines += [f"  │ {line}" for line in tail[-LOG_LINES:]]
    if len(exited) > 3:
        lines.append(f"(and {len(exited) - 3} more)")
    return Finding("Workers that failed", "\n".join(lines), "", severity="info")


def own_events(job: Obj, events: Sequence[Obj]) -> list[Obj]:
    """This job's events and its pods': a job deleted and created again under the same
    name leaves its predecessor's events behind for an hour."""
    meta = job.get("metadata") or {}
    uid, created = meta.get("uid"), parse_time(meta.get("creationTimestamp"))
    out = []
    for e in events:
        obj = e.get("involvedObject") or e.get("regarding") or {}
        if obj.get("kind") == names.KIND:
            if uid and obj.get("uid") and obj["uid"] != uid:
                continue
        elif created is not None and _event_time(e) < created:
            continue
        out.append(e)
    return out


def explain(
    job: Obj,
    pods: Sequence[Obj],
    events: Sequence[Obj],
    now: datetime,
    logs: Mapping[str, str] | None = None,
) -> Explanation:
    """Why the job is where it is, from its conditions, its pods, its events and the log
    tails of its failed workers (`logs`, by pod name: see failed_containers)."""
    meta, spec, st = job.get("metadata") or {}, job.get("spec") or {}, job.get("status") or {}
    name, ns = str(meta.get("name", "")), str(meta.get("namespace", ""))
    phase = str(st.get("phase") or "")
    logs = logs or {}
    states = tuple(sorted((pod_state(p, now) for p in pods), key=lambda p: _index(p.name)))
    lines = recent_events(own_events(job, events), now)
    findings: list[Finding] = []

    def done(summary: str, ok: bool = False) -> Explanation:
        return Explanation(name, ns, phase or "-", ok, summary, tuple(findings), states, lines)

    if meta.get("deletionTimestamp"):
        return done(f"gtj/{name} is being deleted.")
    if not phase:
        findings.append(
            Finding(
                "The operator has not reconciled this job yet (it has no status)",
                "",
                "Check that the operator runs (`kubectl get pods -A -l "
                "app.kubernetes.io/name=gaudi-operator`) and read its log; a job in a "
                "namespace the operator does not watch is never reconciled.",
            )
        )
        return done(f"gtj/{name} has no status yet.")

    invalid = condition(job, "InvalidSpec")
    if is_true(invalid):
        assert invalid is not None
        rejected = invalid.get("reason") == "PodRejected"
        findings.append(
            Finding(
                "The API server refused a worker pod built from this spec "
                "(InvalidSpec, PodRejected)"
                if rejected
                else "The spec cannot run (InvalidSpec)",
                str(invalid.get("message") or ""),
                "An admission policy (the chart's refuses privileged pods, host paths, host "
                "networking, foreign service accounts) or a quota refused it: change "
                "spec.template and apply the job again."
                if rejected
                else "Fix the field the message names and apply the job again; the operator "
                "tries again when the spec changes.",
            )
        )

    if phase == "Succeeded":
        c = condition(job, "Succeeded") or {}
        when = st.get("completionTime") or c.get("lastTransitionTime")
        return done(
            f"gtj/{name} Succeeded {age(when, now)} ago ({c.get('message') or 'done'}). "
            "Nothing to do.",
            ok=True,
        )

    if phase == "Failed":
        c = condition(job, "Failed") or {}
        reason, message = str(c.get("reason") or "Failed"), str(c.get("message") or "")
        policy = spec.get("failurePolicy") or {}
        if reason == "RestartLimitExceeded":
            fix = (
                f"It restarted {st.get('restarts', 0)} times (failurePolicy.maxRestarts "
                f"{policy.get('maxRestarts', 5)}). Fix what the last failure shows, then "
                "delete and re-create the job; raise maxRestarts only for failures that pass."
            )
        elif reason == "FailurePolicyRule":
            fix = (
                "A failurePolicy rule with action Fail matched: this failure is final by your "
                "policy. Fix its cause, then delete and re-create the job."
            )
        elif reason == "DeadlineExceeded":
            fix = (
                "Raise spec.runPolicy.activeDeadlineSeconds (or train less), then delete and "
                "re-create the job."
            )
        else:
            fix = "A Failed job does not restart: fix the cause, then delete and re-create it."
        findings.insert(0, Finding(f"Failed: {reason}", message, fix))
        lf = _last_failure(job, now)
        if lf is not None:
            findings.append(lf)
        failed = _failed_workers(states, logs)
        if failed is not None:
            findings.append(failed)
        return done(f"gtj/{name} Failed ({reason}): {message}".rstrip(": "))

    if phase == "Suspended":
        c = condition(job, "Suspended") or {}
        queued = condition(job, "Queued")
        if c.get("reason") == "Queued" or is_true(queued):
            q = queued or {}
            queue = (spec.get("scheduling") or {}).get("queue", "")
            if q.get("reason") == "KueueNotInstalled":
                fix = "Install Kueue, or remove spec.scheduling.queue to run without it."
            else:
                fix = (
                    f"Kueue admits it when the ClusterQueue behind LocalQueue {queue} has "
                    f"quota: `kubectl get workloads -n {ns}`, `kubectl describe "
                    f"localqueue {queue} -n {ns}`."
                )
            findings.insert(
                0,
                Finding(
                    f"Waiting for admission by Kueue ({q.get('reason') or 'Queued'})",
                    str(q.get("message") or c.get("message") or ""),
                    fix,
                ),
            )
            return done(f"gtj/{name} is queued: Kueue has not admitted it yet.")
        findings.insert(
            0,
            Finding(
                "Suspended: spec.suspend is true",
                str(c.get("message") or ""),
                f"Resume it: `kubectl patch gtj {name} -n {ns} --type merge -p "
                '\'{"spec":{"suspend":false}}\'`.',
                severity="info",
            ),
        )
        return done(f"gtj/{name} is Suspended on purpose: its workers are deleted, the job kept.")

    sched = _scheduling_finding(job, states)
    waiting = _waiting_findings(job, states)

    if phase == "Restarting":
        c = condition(job, "Restarting") or {}
        reason, message = str(c.get("reason") or "?"), str(c.get("message") or "")
        policy = spec.get("failurePolicy") or {}
        findings.insert(
            0,
            Finding(
                f"Restarting after {reason}",
                message,
                _fix_for_failure(reason, ns) if reason == "NoFeasibleNode" else "",
            ),
        )
        lf = _last_failure(job, now)
        if lf is not None:
            findings.append(lf)
        findings += [f for f in (sched, *waiting, _failed_workers(states, logs)) if f is not None]
        return done(
            f"gtj/{name} is Restarting after {reason} (restarts: {st.get('restarts', 0)} of "
            f"failurePolicy.maxRestarts {policy.get('maxRestarts', 5)})."
        )

    if phase in ("Pending", "Starting", "Scaling"):
        findings += [f for f in (sched, *waiting) if f is not None]
        if phase == "Scaling":
            s = st.get("lastScale") or {}
            if s:
                findings.append(
                    Finding(
                        f"Resizing {s.get('from')} → {s.get('to')} ({s.get('reason')})",
                        f"{age(s.get('time'), now)} ago",
                        "",
                        severity="info",
                    )
                )
        if not [f for f in findings if f.severity == "problem"]:
            if not states:
                findings.append(
                    Finding(
                        "No worker pods yet",
                        str((condition(job, "Created") or {}).get("message") or ""),
                        "The operator creates them on its next pass; if none appear, the "
                        "events below or the operator's log say why.",
                        severity="info",
                    )
                )
            else:
                starting = [p for p in states if not p.ok]
                findings.append(
                    Finding(
                        f"{len(starting)} of {len(states)} workers are still starting",
                        "; ".join(f"{p.name}: {p.state}" for p in starting[:3]),
                        "Nothing is wrong yet: containers are being created or images "
                        "pulled. If it lasts, the events below say what they wait for.",
                        severity="info",
                    )
                )
        first = next((f for f in findings if f.severity == "problem"), None)
        headline = first.title if first else findings[0].title if findings else "starting"
        headline = headline.split(" (")[0]  # the reason in brackets is for the finding
        return done(f"gtj/{name} is {phase}: {headline[0].lower()}{headline[1:]}.")

    # Running (or a phase this plugin does not know): fine unless a condition says otherwise.
    metrics = condition(job, "MetricsUnavailable")
    if is_true(metrics):
        assert metrics is not None
        findings.append(
            Finding(
                "The autoscaler cannot read its metric (MetricsUnavailable); the job keeps "
                "its size",
                str(metrics.get("message") or ""),
                "Check spec.autoscaling.metric.query and the Prometheus URL "
                "(spec.autoscaling.prometheusURL or the operator's default).",
                severity="warning",
            )
        )
    conflict = condition(job, "AutoscalingConflict")
    if is_true(conflict):
        assert conflict is not None
        findings.append(
            Finding(
                "Two autoscalers target this job (AutoscalingConflict)",
                str(conflict.get("message") or ""),
                "Turn off spec.autoscaling.enabled or remove the HPA/KEDA object.",
                severity="warning",
            )
        )
    findings += waiting
    ready = workers_ready(job)
    problems = [f for f in findings if f.severity == "problem"]
    if phase == "Running" and not problems:
        tail = " Nothing to do." if not findings else " It runs; see below."
        return done(f"gtj/{name} is Running: {ready} workers ready.{tail}", ok=not findings)
    if problems:  # e.g. a running job whose new worker the API server refused
        said = problems[0].title.split(" (")[0]
        return done(
            f"gtj/{name} is {phase} ({ready} workers ready), but: {said[0].lower()}{said[1:]}."
        )
    return done(f"gtj/{name} is {phase}: {ready} workers ready.")


def workers_ready(job: Obj) -> str:
    st = job.get("status") or {}
    desired = ((job.get("spec") or {}).get("workers") or {}).get("replicas", "?")
    return str(st.get("workers") or f"{st.get('readyReplicas', 0)}/{desired}")


def _index(pod: str) -> tuple[int, str]:
    tail = pod.rsplit("-", 1)[-1]
    return (int(tail), pod) if tail.isdigit() else (1 << 30, pod)


# --- rendering -------------------------------------------------------------------------------

MARKS = {"problem": ("✗", "red"), "warning": ("!", "yellow"), "info": ("·", "cyan")}
POD_LINES = 6  # pods shown before grouping the rest


def pod_lines(pods: Sequence[PodState]) -> list[str]:
    """Pods that are not fine, alike ones folded into one line; fine ones counted."""
    fine = [p for p in pods if p.ok]
    groups: dict[str, list[PodState]] = {}
    for p in pods:
        if not p.ok:
            groups.setdefault(_generic(p.state), []).append(p)
    out = []
    for alike in groups.values():
        first = alike[0]
        who = first.name + (f" (+{len(alike) - 1} more)" if len(alike) > 1 else "")
        out.append(f"{who:<24} {first.phase:<9} {first.state}")
    out = out[:POD_LINES]
    if len(groups) > POD_LINES:
        out.append(f"... and {len(groups) - POD_LINES} more kinds of trouble")
    if fine:
        verb = "is" if len(fine) == 1 else "are"
        more = " more" if out else ""
        out.append(f"{len(fine)}{more} {verb} fine ({_summary(fine)})")
    return out


def _generic(state: str) -> str:
    # Placement messages name the pod's own numbers ("0/4 nodes ...") that repeat alike.
    return state.split(" on ")[0] if state.startswith(("running", "starting")) else state


def _summary(pods: Sequence[PodState]) -> str:
    by: dict[str, int] = {}
    for p in pods:
        by[p.phase] = by.get(p.phase, 0) + 1
    return ", ".join(f"{n} {phase.lower()}" for phase, n in sorted(by.items()))


def _indented(text: Text) -> RenderableType:
    return Padding(text, (0, 0, 0, 2), expand=False)  # wrapped lines keep the indent


def render(e: Explanation) -> RenderableType:
    color = (
        "green"
        if e.ok
        else "yellow"
        if e.phase in ("Pending", "Starting", "Scaling", "Suspended")
        else "red"
    )
    parts: list[RenderableType] = [Text(e.summary, style=f"bold {color}")]
    for f in e.findings:
        mark, style = MARKS.get(f.severity, MARKS["problem"])
        parts.append(Text(""))
        parts.append(Text.assemble((f"{mark} ", style), (f.title, "bold")))
        if f.detail:
            parts.append(_indented(Text(f.detail)))
        if f.fix:
            parts.append(_indented(Text.assemble(("→ ", "bold"), f.fix)))
    if e.pods:
        parts += [Text(""), Text(f"Worker pods ({len(e.pods)})", style="bold")]
        parts += [_indented(Text(line)) for line in pod_lines(e.pods)]
    if e.events:
        parts += [Text(""), Text("Recent events", style="bold")]
        parts += [_indented(Text(line)) for line in e.events]
    return Group(*parts)
