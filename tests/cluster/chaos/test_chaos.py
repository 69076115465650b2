"""Overlapping faults on the real local cluster, at random but seeded, against two operator
replicas with leader election: the leader SIGKILLed, SIGSTOPped until the standby takes
over and then resumed (it must exit), and once armed to crash right after a restart's
intent; workers failed and deleted; jobs resized, deleted and re-created, some deleted with
`--cascade=orphan` and re-created under the same name; a namespace whose ResourceQuota
refuses some workers until room is made; and the API server killed once. Jobs run with
both restart strategies, RecreateAll and RecreateFailed.

Afterwards every job converges: exactly `replicas` live workers with indices 0..n-1, all
of the current generation and owned by the current uid, no orphan pod (the orphans were
never adopted), no pod POSTed twice, and each job's restart count is exactly the failures
injected into it. The quota job showed `QuotaExceeded` (one event) and runs once the quota
has room. Nothing a deposed leader sent reached the API server after the takeover, and
no replica logged a traceback.

Exact counts need faults the operator can see: a failure is injected into a job only
while it is settled (running, every earlier failure counted), since RecreateAll rightly
counts two failures of one world as one restart; a deleted worker is remembered only by
the leader that watched it go (the operator keeps no record of a deletion it never saw,
and a leader that has just taken the Lease may not watch pods yet), so a delete is
injected only while a leader has led for a few seconds, and the run waits for it to be
counted before the next fault. The one fault the test does not inject, kwok's late delete of a new
pod with the same name (below), is found in the API server's audit log and allowed for,
job by job; the run prints when it happened.

GAUDI3_CHAOS_SEED reproduces a run (printed); GAUDI3_CHAOS_SECONDS sets its length (the
suite runs a short one; `GAUDI3_CHAOS_SECONDS=600 pytest tests/cluster/chaos` soaks)."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chaos import (
    Pause,
    duplicate_creates,
    fail_pod,
    fenced,
    kwok_flakes,
    resync_pod_readiness,
)
from cluster.gtj import GROUP, PLURAL, VERSION, create_job, job_body
from cluster.leader import Candidate, holder
from conftest import wait_for
from gaudi_devtools.cluster import audit

# Alone, after the two-worker part of `make test`: kwok v0.8.0 finishes a pod's deletion by
# name with no uid precondition (a kubelet uses one), so when it lags under load its late
# delete of a worker the operator replaced takes the new worker of the same name, and the
# restart that follows is kwok's, not a fault the test injected (seen twice in four
# two-worker runs: a new pod "deleted by another client" 19-90 ms after its creation).
# `kwok_flakes` finds each one in the audit log.
pytestmark = [pytest.mark.cluster, pytest.mark.serial]

SEED = int(os.environ.get("GAUDI3_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
SECONDS = float(os.environ.get("GAUDI3_CHAOS_SECONDS", "30"))
JOBS = ["c0", "c1", "c2", "c3", "c4"]
STRATEGIES = ["RecreateAll", "RecreateFailed"]
QUOTA_JOB, QUOTA_WORKERS, QUOTA_HPUS = "q0", 3, 2  # one worker refused until room is made
CONVERGE_SECONDS = 120  # the bound we state: every job settled this long after the faults
# The random mix; one of each episode also runs at a set point of every run.
ACTIONS = [*["fail"] * 4, *["delete"] * 2, *["resize"] * 2, "kill", "pause", "recreate", "orphan"]
MIN_FAILURES = 4  # injected in a run, at least (the run goes on until then, within a cap)
COUNTED_SECONDS = 30  # a deleted worker is counted this soon while a leader runs
LEADER_WARMUP = 5  # seconds a new leader leads before a deletion is injected
GEN = "gaudi.scalestarter.dev/generation"
INDEX = "gaudi.scalestarter.dev/worker-index"
JOB_LABEL = "gaudi.scalestarter.dev/job-name"
FAILPOINT = "after-restart-intent"


def spec(replicas: int, strategy: str) -> dict[str, Any]:
    return job_body(
        "x",
        hpusPerWorker=1,
        workers={"replicas": replicas, "minReplicas": 1, "maxReplicas": 4},
        failurePolicy={"backoffSeconds": 0, "maxRestarts": 1000, "restartStrategy": strategy},
    )["spec"]


def make(custom: Any, ns: str, name: str, replicas: int, strategy: str) -> None:
    body = job_body(name)
    body["spec"] = spec(replicas, strategy)
    create_job(custom, ns, body)


def jobs(custom: Any, ns: str) -> dict[str, dict[str, Any]]:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
    return {j["metadata"]["name"]: j for j in items}


def live_pods(core: Any, ns: str) -> list[Any]:
    return [p for p in core.list_namespaced_pod(ns).items if not p.metadata.deletion_timestamp]


def owner(pod: Any) -> str | None:
    refs = [r for r in pod.metadata.owner_references or [] if r.controller]
    return refs[0].uid if refs else None


def restarts_of(job: dict[str, Any]) -> int:
    return int((job.get("status") or {}).get("restarts", 0))


def kill_apiserver(cluster: Any, core: Any) -> None:
    pid = cluster.running().get("kube-apiserver")
    if pid:
        os.kill(pid, signal.SIGKILL)
    time.sleep(1)

    def answers() -> bool:
        try:
            core.list_namespace(limit=1)
            return True
        except Exception:
            return False

    # Back well within the nodes' 20 s monitor grace, as a supervisor restarts it: a longer
    # outage makes the node controller mark every pod NotReady, and kwok (unlike a real
    # kubelet) never marks them Ready again, which would test kwok, not the operator.
    deadline = time.monotonic() + 3
    while not answers() and time.monotonic() < deadline:  # the cluster's supervisor
        time.sleep(0.5)
    if not answers():  # no supervisor: restart that one component ourselves
        cluster._start_apiserver(cluster.settings)
        wait_for(answers, timeout=60, what="the API server back")


def job_problem(
    job: dict[str, Any] | None, pods: list[Any], name: str, replicas: int
) -> str | None:
    """None when the job runs as promised with `replicas` workers, else what is wrong."""
    if job is None:
        return f"{name} is missing"
    status = job.get("status") or {}
    gen = str(status.get("restartGeneration", 0))
    mine = [p for p in pods if (p.metadata.labels or {}).get(JOB_LABEL) == name]
    if sorted(int(p.metadata.labels[INDEX]) for p in mine) != list(range(replicas)):
        return f"{name}: workers {sorted(p.metadata.name for p in mine)} for {replicas} replicas"
    if {p.metadata.labels[GEN] for p in mine} != {gen}:
        return f"{name}: generations {[p.metadata.labels[GEN] for p in mine]} != {gen}"
    if {owner(p) for p in mine} != {job["metadata"]["uid"]}:
        return f"{name}: workers owned by {sorted({str(owner(p)) for p in mine})}"
    if status.get("phase") != "Running" or any(p.status.phase != "Running" for p in mine):
        states = [
            (p.metadata.name, p.status.phase, p.spec.node_name,
             [(c.type, c.status) for c in p.status.conditions or []])
            for p in mine
        ]  # fmt: skip
        return f"{name}: phase {status.get('phase')}, workers {states}"
    return None


def converged(custom: Any, core: Any, ns: str, wanted: dict[str, int]) -> str | None:
    """None when every job is settled as promised, else what is still wrong."""
    live = jobs(custom, ns)
    pods = live_pods(core, ns)
    uids = {j["metadata"]["uid"] for j in live.values()}
    orphans = [p.metadata.name for p in pods if owner(p) not in uids]
    if orphans:
        return f"orphan pods {orphans}"
    for name, replicas in wanted.items():
        problem = job_problem(live.get(name), pods, name, replicas)
        if problem is not None:
            return problem
    return None


def bare_pod_runs(core: Any, ns: str) -> bool:
    """Whether the cluster itself still works: a plain pod, no operator involved."""
    from kubernetes import client

    tol = [client.V1Toleration(key="habana.ai/gaudi", operator="Exists", effect="NoSchedule")]
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="probe"),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="c", image="probe")], tolerations=tol
        ),
    )
    core.create_namespaced_pod(ns, pod)
    try:
        wait_for(
            lambda: core.read_namespaced_pod("probe", ns).status.phase == "Running",
            timeout=30,
            what="a bare probe pod",
        )
        return True
    except AssertionError:
        return False


# --- the operator's replicas, supervised as a Deployment would -------------------------------


@dataclass
class Replicas:
    chaos: Any
    exits: list[tuple[str, int | None]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # logs of the runs that ended
    failpoint_fired: bool = False
    leading_since: dict[str, float] = field(default_factory=dict)  # identity -> first seen

    @property
    def all(self) -> tuple[Candidate, Candidate]:
        return self.chaos.replicas

    def leader(self) -> Candidate | None:
        """The replica that holds the Lease and runs (None between leaders)."""
        name = holder(self.chaos.leases, self.chaos.namespace, self.chaos.lease)
        for r in self.all:
            if r.alive() and r.leading() and r.identity() == name:
                self.leading_since.setdefault(name, time.monotonic())
                return r
        return None

    def settled_leader(self) -> Candidate | None:
        """The leader, once it has led long enough to watch pods: a new leader's kopf lists
        and watches only after it took the Lease, and a pod deleted before that is a
        missing worker to it, not a vanished one."""
        r = self.leader()
        if r is None or time.monotonic() - self.leading_since[r.identity()] < LEADER_WARMUP:
            return None
        return r

    def other(self, r: Candidate) -> Candidate:
        return self.all[1] if r is self.all[0] else self.all[0]

    def ended(self, r: Candidate, why: str) -> None:
        assert r.proc is not None
        text = r.text()
        self.texts.append(text)
        self.exits.append((why, r.proc.returncode))
        if f"failpoint {FAILPOINT}: exiting" in text:
            self.failpoint_fired = True

    def supervise(self) -> None:
        """Start again every replica that exited (a Deployment's restart)."""
        for r in self.all:
            if r.proc is not None and r.proc.poll() is not None:
                self.ended(r, "exited")
                r.start(wait=False)

    def kill(self, r: Candidate) -> None:
        r.kill()
        self.ended(r, "SIGKILL")

    def pause_until_deposed(self, r: Candidate) -> Pause | None:
        """SIGSTOP the leader until the other replica holds the Lease, then SIGCONT: it must
        exit (non-zero) without acting."""
        standby = self.other(r)
        if not (standby.alive() and "campaigning" in standby.text()):
            return None
        at = datetime.now(UTC)
        paused, took = r.user_agent(), standby.user_agent()
        r.pause()
        try:
            wait_for(
                lambda: (
                    holder(self.chaos.leases, self.chaos.namespace, self.chaos.lease)
                    == standby.identity()
                ),
                timeout=30,
                what="the standby to take over from the paused leader",
            )
        finally:
            r.resume()
        assert r.proc is not None
        wait_for(lambda: r.proc.poll() is not None, timeout=30, what="the deposed leader to exit")
        assert r.proc.returncode == 1 and "lost the lease" in r.text(), r.tail()
        self.ended(r, "deposed")
        r.start(wait=False)
        return Pause(paused, took, at)

    def arm_standby(self) -> bool:
        """Restart the standby armed to crash right after a restart's intent, then stop the
        leader cleanly (it gives the Lease back) so that the armed one leads at once: the
        next restart it decides is committed and not done."""
        lead = self.leader()
        if lead is None or not self.other(lead).alive():
            return False
        standby = self.other(lead)
        standby.stop()
        self.ended(standby, "stopped to arm")
        standby.env["GAUDI3_FAILPOINTS"] = FAILPOINT
        try:
            standby.start()
        finally:
            del standby.env["GAUDI3_FAILPOINTS"]  # its next start (after the crash) is plain
        wait_for(lambda: "campaigning" in standby.text(), timeout=30, what="the armed standby")
        lead.stop()
        self.ended(lead, "stopped for the armed one")
        # The old leader comes back only once the armed one leads: started at once, it can
        # take the Lease it just released before the armed one's next retry (seen: released
        # 0.8 s before it led again, the retry period being 1 s).
        wait_for(
            lambda: standby.alive() and standby.leading(),
            timeout=30,
            what="the armed replica to lead",
        )
        lead.start(wait=False)
        return True


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Book:
    """What the test did to each job's current incarnation: the restarts it must show."""

    expected: Counter[str] = field(default_factory=Counter)
    allowed: Counter[str] = field(default_factory=Counter)  # kwok's deletes, from the audit
    strategy: dict[str, str] = field(default_factory=dict)
    injected: Counter[str] = field(default_factory=Counter)  # by strategy, all incarnations
    lost: list[str] = field(default_factory=list)  # deletions never counted
    since: dict[str, datetime] = field(default_factory=dict)  # each incarnation's start

    def new(self, name: str, strategy: str) -> None:
        self.expected[name] = 0
        self.allowed[name] = 0
        self.strategy[name] = strategy
        self.since[name] = datetime.now(UTC)

    def counted(self, name: str, restarts: int) -> bool:
        return self.expected[name] <= restarts <= self.expected[name] + self.allowed[name]


def test_jobs_converge_after_overlapping_faults(chaos: Any) -> None:
    cluster, core, custom = chaos.cluster, chaos.core, chaos.custom
    ns, qns = chaos.namespace, chaos.quota_namespace
    rng = random.Random(SEED)
    print(f"chaos: GAUDI3_CHAOS_SEED={SEED} GAUDI3_CHAOS_SECONDS={SECONDS:g}")
    audit_log = Path(cluster.audit_log)
    reps = Replicas(chaos)
    book = Book()

    from kubernetes import client

    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="hpus"),
        spec=client.V1ResourceQuotaSpec(hard={"requests.habana.ai/gaudi": str(QUOTA_HPUS)}),
    )
    core.create_namespaced_resource_quota(qns, quota)
    wait_for(
        lambda: core.read_namespaced_resource_quota("hpus", qns).status.hard or {},
        timeout=30,
        what="the quota's status (the quota controller syncs it)",
    )
    make(custom, qns, QUOTA_JOB, QUOTA_WORKERS, "RecreateAll")
    quota_seen = False

    wanted = {name: rng.randint(1, 3) for name in JOBS}
    for i, (name, n) in enumerate(wanted.items()):
        strategy = STRATEGIES[i % 2]
        make(custom, ns, name, n, strategy)
        book.new(name, strategy)
    orphans: dict[str, str] = {}  # uid -> name, of pods left by --cascade=orphan
    adopted: set[str] = set()
    pauses: list[Pause] = []
    done: Counter[str] = Counter()
    # One of each episode at a set point of the run, so that a short run has them all; the
    # random mix adds more.
    episodes = {"orphan": 0.1, "arm": 0.2, "room": 0.35, "apiserver": 0.5, "pause": 0.65}
    start = time.monotonic()
    end = start + SECONDS
    cap = start + 3 * SECONDS  # on a loaded machine every step is slower

    def more() -> bool:
        """Until the time is up, every episode ran and a few failures were injected."""
        now = time.monotonic()
        wanted_more = bool(episodes) or sum(book.injected.values()) < MIN_FAILURES
        return now < end or (wanted_more and now < cap)

    def settled() -> dict[str, dict[str, Any]]:
        """Jobs that run as wanted, every failure injected into them counted."""
        live = jobs(custom, ns)
        pods = live_pods(core, ns)
        for p in pods:
            if p.metadata.uid in orphans and owner(p) is not None:
                adopted.add(f"{p.metadata.name} ({p.metadata.uid}) now owned by {owner(p)}")
        return {
            name: job
            for name, job in live.items()
            if name in wanted
            and job_problem(job, pods, name, wanted[name]) is None
            and book.counted(name, restarts_of(job))
        }

    def running_workers(name: str) -> list[Any]:
        return [
            p
            for p in live_pods(core, ns)
            if (p.metadata.labels or {}).get(JOB_LABEL) == name and p.status.phase == "Running"
        ]

    def recreate(name: str, orphan: bool) -> None:
        policy = "Orphan" if orphan else "Background"
        mine = [p for p in live_pods(core, ns) if (p.metadata.labels or {}).get(JOB_LABEL) == name]
        kept = mine if orphan else []
        custom.delete_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, name, propagation_policy=policy
        )
        wait_for(lambda: name not in jobs(custom, ns), timeout=30, what=f"{name} deleted")
        for p in kept:
            orphans[p.metadata.uid] = p.metadata.name
        wanted[name] = rng.randint(1, 3)
        strategy = rng.choice(STRATEGIES)
        make(custom, ns, name, wanted[name], strategy)
        book.new(name, strategy)

    def inject(action: str, name: str, job: dict[str, Any]) -> bool:
        gen = str((job.get("status") or {}).get("restartGeneration", 0))
        running = [p for p in running_workers(name) if p.metadata.labels.get(GEN) == gen]
        if not running:
            return False
        pod = rng.choice(running).metadata.name
        if action == "fail":
            fail_pod(core, ns, pod)
            book.expected[name] += 1
        else:
            core.delete_namespaced_pod(pod, ns)
            book.expected[name] += 1

            # Only the leader that watched it go knows a deletion: wait for the count
            # before the next fault can take that leader away.
            def counted() -> bool:
                return restarts_of(jobs(custom, ns)[name]) >= book.expected[name]

            try:
                wait_for(counted, timeout=COUNTED_SECONDS, what=f"the deletion of {pod} counted")
            except AssertionError:
                book.lost.append(f"{pod} deleted at {datetime.now(UTC).isoformat()}")
        book.injected[book.strategy[name]] += 1
        return True

    while more():
        reps.supervise()
        resync_pod_readiness(core, ns)  # kwok has no status sync (see below)
        elapsed = (time.monotonic() - start) / SECONDS
        due = [e for e, at in episodes.items() if elapsed >= at]
        action = due[0] if due else rng.choice(ACTIONS)
        ready = settled()
        name = rng.choice(sorted(ready)) if ready else None
        lead = reps.leader()
        watching = reps.settled_leader()
        acted = False
        if action == "kill" and lead is not None:
            reps.kill(lead)
            time.sleep(rng.uniform(0, 2))
            lead.start(wait=False)
            acted = True
        elif action == "pause" and lead is not None:
            pause = reps.pause_until_deposed(lead)
            if pause is not None:
                pauses.append(pause)
                acted = True
        elif action == "arm" and name is not None and reps.arm_standby():
            # A failure for the armed leader: it commits the restart's intent and dies
            # before it deletes a pod; the other replica finishes the restart. Preferably
            # RecreateFailed's, whose pod survives in the same generation (issue 18).
            armed = reps.leader()
            picked = [n for n in sorted(ready) if book.strategy[n] == "RecreateFailed"]
            name = rng.choice(picked) if picked else name
            acted = inject("fail", name, ready[name])
            if acted and armed is not None:
                wait_for(
                    lambda r=armed: not r.alive(),
                    timeout=30,
                    what="the armed leader to crash after the intent",
                )
        elif action == "apiserver":
            print(f"chaos: API server killed at {datetime.now(UTC).isoformat()}")
            kill_apiserver(cluster, core)
            acted = True
        elif action == "room":
            core.patch_namespaced_resource_quota(
                "hpus", qns, {"spec": {"hard": {"requests.habana.ai/gaudi": "100"}}}
            )
            acted = True
        elif name is None:
            pass
        elif action == "fail" or (action == "delete" and watching is not None):
            acted = inject(action, name, ready[name])
        elif action == "resize":
            wanted[name] = rng.choice([n for n in range(1, 5) if n != wanted[name]])
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, name, {"spec": {"workers": {"replicas": wanted[name]}}}
            )
            acted = True
        elif action in ("recreate", "orphan"):
            recreate(name, orphan=action == "orphan")
            acted = True
        if acted:
            done[action] += 1
            # An episode is done only once it acted, however it was drawn: one drawn at
            # random before its time, when it could not act (no leader, no settled job),
            # stays due (a seed lost the orphan and pause episodes that way).
            episodes.pop(action, None)
        q = jobs(custom, qns).get(QUOTA_JOB) or {}
        conds = {c["type"]: c for c in (q.get("status") or {}).get("conditions") or []}
        if conds.get("Created", {}).get("reason") == "QuotaExceeded":
            quota_seen = True
        time.sleep(rng.uniform(0.2, 1.0))
    reps.supervise()
    took = time.monotonic() - start
    print(f"chaos: {took:.0f}s of faults: {dict(done)}; failures by strategy {dict(book.injected)}")
    print(f"chaos: replica exits {reps.exits}; failpoint fired: {reps.failpoint_fired}")

    wanted_q = {QUOTA_JOB: QUOTA_WORKERS}
    started = time.monotonic()
    problem: str | None = "not checked"
    resynced: set[str] = set()
    while time.monotonic() - started < CONVERGE_SECONDS:
        reps.supervise()
        # kwok plays the kubelet but has no status sync: without this a pod the node
        # controller marked NotReady during a late heartbeat would stay so forever.
        resynced.update(resync_pod_readiness(core, ns))
        resynced.update(resync_pod_readiness(core, qns))
        problem = converged(custom, core, ns, wanted) or converged(custom, core, qns, wanted_q)
        if problem is None:
            break
        time.sleep(1)
    if problem is not None:
        works = bare_pod_runs(core, ns)
        pytest.fail(
            f"not converged {CONVERGE_SECONDS}s after the faults (seed {SEED}): {problem}; "
            f"the cluster itself {'works' if works else 'does NOT work'} (a bare pod "
            f"{'runs' if works else 'does not run'})"
        )
    print(f"chaos: converged {time.monotonic() - started:.1f}s after the last fault")
    if resynced:
        print(f"chaos: marked Ready again as a kubelet would: {sorted(resynced)}")

    # Exact restart counts: every injected failure counted once, kwok's own deletes allowed
    # for (each one, at most one restart), job by job.
    events = audit.read(audit_log)
    flakes = kwok_flakes(events, ns)
    for e, failed in flakes:
        job = e.name.rsplit("-worker-", 1)[0]
        if not failed and job in book.since and e.completed >= book.since[job]:
            book.allowed[job] += 1
        history = [h for h in events if h.resource == "pods" and h.name == e.name]
        lines = "\n  ".join(map(str, [h for h in history if h.completed <= e.completed][-6:]))
        what = "a pod the test had failed" if failed else "a pod no one had touched"
        print(f"chaos: kwok deleted {what}, a new one of a replaced name:\n  {lines}")
    counts = {name: restarts_of(job) for name, job in jobs(custom, ns).items()}
    table = {n: (counts[n], book.expected[n], book.allowed[n], book.strategy[n]) for n in JOBS}
    print(f"chaos: restarts (counted, injected, kwok's, strategy) {table}")
    assert not book.lost, f"deletions no leader counted (seed {SEED}): {book.lost}"
    wrong = {n: t for n, t in table.items() if not book.counted(n, t[0])}
    assert not wrong, f"restart counts != failures injected (seed {SEED}): {wrong}"

    # Orphans stayed foreign: never adopted, gone (deleted by uid), nothing POSTed twice.
    assert not adopted, f"orphaned pods adopted: {sorted(adopted)}"
    left = [p.metadata.name for p in live_pods(core, ns) if p.metadata.uid in orphans]
    assert not left, f"orphans still there: {left}"
    twice = duplicate_creates(events, ns) + duplicate_creates(events, qns)
    assert not twice, "pods POSTed twice:\n" + "\n".join(map(str, twice))

    # The quota refused a worker: one condition, one event, and it runs now there is room.
    assert quota_seen, "the quota job never showed Created=False QuotaExceeded"
    q = jobs(custom, qns)[QUOTA_JOB]
    told = [
        e
        for e in core.list_namespaced_event(qns).items
        if e.involved_object.uid == q["metadata"]["uid"] and e.reason == "QuotaExceeded"
    ]
    assert len(told) == 1, [(e.reason, e.message) for e in told]
    created = next(c for c in q["status"]["conditions"] if c["type"] == "Created")
    assert created["status"] == "True", created

    # Fencing: nothing a paused, deposed leader sent reached the server after the takeover.
    for p in pauses:
        late = fenced(events, chaos.lease, p)
        assert late is None, f"the deposed leader {p.paused} wrote after the takeover:\n{late}"

    # The run had each kind of episode it promises.
    assert reps.failpoint_fired, f"no replica crashed after a restart's intent: {reps.exits}"
    assert pauses and done["orphan"], f"episodes: {dict(done)}"

    texts = reps.texts + [r.text() for r in reps.all]
    for text in texts:
        assert "Traceback" not in text, text[text.index("Traceback") - 2000 :][:6000]
