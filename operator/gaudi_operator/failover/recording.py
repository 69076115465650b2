"""Failover's metrics: failures by reason, restarts, and the latency from detection to the
replacement workers created and to the whole world running again."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from gaudi_operator.api import Phase
from gaudi_operator.failover import policy as failover
from gaudi_operator.failover.signals import DISRUPTIONS
from gaudi_operator.jobs.observation import JobView
from gaudi_operator.jobs.plan import Event, Plan
from gaudi_operator.observability import metrics


@dataclass
class _Recovery:
    since: datetime  # the pass that first saw the failure
    restarted: bool = False
    created: bool = False


class FailoverRecorder:
    """Metrics of each failover: failures, restarts, and the latency from detection to
    the replacement being created and to the whole world running again."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], _Recovery] = {}
        metrics.track_cache("failover_open", lambda: len(self._open))

    def after_pass(
        self,
        job: JobView,
        plan: Plan,
        events: Iterable[Event],
        now: datetime,
    ) -> None:
        key = (job.namespace, job.name)
        fo = plan.failover
        decision = fo.decision if fo is not None else None
        if fo is not None and decision is not None:
            for f in fo.new_failures:
                metrics.FAILURES.labels(reason=f.reason.value).inc()
            if fo.new_failures and key not in self._open:
                self._open[key] = _Recovery(since=now)
            if decision.verdict == failover.Verdict.RESTART:
                strategy = decision.strategy.value if decision.strategy else ""
                if fo.in_place and not decision.new_generation:
                    strategy = "InPlace"  # failurePolicy.restartInPlace: no pod replaced
                metrics.RESTARTS.labels(
                    strategy=strategy,
                    counted=str(decision.counted).lower(),
                ).inc()
                metrics.JOB_SERIES.restarted(job.namespace, job.name)
                self._open.setdefault(key, _Recovery(since=now)).restarted = True
                handled = None if decision.new_generation else decision.pods_to_delete
                DISRUPTIONS.handled(job.namespace, job.name, handled)
            elif decision.verdict == failover.Verdict.FAIL:
                self._open.pop(key, None)
                DISRUPTIONS.handled(job.namespace, job.name)
        rec = self._open.get(key)
        if rec is None or not rec.restarted:
            return
        if not rec.created and any(e.reason == "CreatedWorkers" for e in events):
            rec.created = True
            metrics.FAILOVER_LATENCY.labels(stage="created").observe(
                max(0.0, (now - rec.since).total_seconds())
            )
        if plan.status.phase == Phase.RUNNING:
            metrics.FAILOVER_LATENCY.labels(stage="running").observe(
                max(0.0, (now - rec.since).total_seconds())
            )
            del self._open[key]

    def forget(self, key: tuple[str, str]) -> None:
        self._open.pop(key, None)


RECORDER = FailoverRecorder()
