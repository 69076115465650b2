"""The short soak: jobs created and deleted in rounds (plain, autoscaled, failing once)
leave nothing behind in any of the operator's per-job maps or per-job metric series.

A real operator of its own watches only the soak's namespace (so other tests' jobs never
count), with the autoscaler on the cluster's Prometheus; the soak itself is the benchmark's
(`gaudi3 benchmark soak`), a few rounds of a few jobs instead of thousands.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.gtj import OperatorProcess
from gaudi_devtools.benchmarks.soak import Operator, soak

ROUNDS, JOBS, SEED = 2, 3, 11  # each round: one plain, one autoscaled, one failing once
PER_JOB_CACHES = {
    "job_phases",
    "job_conditions",
    "controller_written",
    "controller_failures",
    "workqueue_scheduled",
    "gang_warned",
    "failover_open",
    "disruptions",
    "own_deletions",
    "autoscale_due",
    "autoscale_running",
    "expectations",
    "services_created",
    "pod_groups_created",
    "create_refusals",
    "status_held",
}


@pytest.fixture
def soak_operator(
    operator: OperatorProcess, cluster: Any, tmp_path: Path, hpus_free: Callable[[], None]
) -> Iterator[tuple[Operator, str]]:
    """An operator of its own for one namespace, with a 1 s autoscaler loop on the cluster's
    Prometheus. The session's operator is paused meanwhile (SIGSTOP, as if descheduled), so
    one operator acts on the soak's jobs and no restart of it is paid."""
    hpus_free()  # earlier tests' workers gone, while their operator still runs
    ns = f"soak-{uuid.uuid4().hex[:6]}"
    paused = operator.proc if operator.proc is not None and operator.proc.poll() is None else None
    own = OperatorProcess(Path(cluster.kubeconfig), tmp_path / "soak-operator.log")
    own.env["GAUDI3_AUTOSCALE_INTERVAL_SECONDS"] = "1"
    if paused is not None:
        paused.send_signal(signal.SIGSTOP)
    try:
        own.start("--namespace", ns, "--prometheus-url", cluster.prometheus_url)
        assert own.proc is not None
        yield Operator(own.proc, own.metrics_port, own.log), ns
    except BaseException:
        print(own.tail(120))  # shown with the failure
        raise
    finally:
        if own.proc is not None and own.proc.poll() is None:
            own.kill()
        if paused is not None:
            paused.send_signal(signal.SIGCONT)


def test_deleted_jobs_leave_no_entry_in_any_per_job_cache(
    soak_operator: tuple[Operator, str], cluster: Any
) -> None:
    op, ns = soak_operator
    samples, peak = asyncio.run(
        soak(
            op,
            str(Path(cluster.kubeconfig)),
            rounds=ROUNDS,
            jobs=JOBS,
            autoscaled=1 / 3,
            failing=1 / 3,
            seed=SEED,
            step_timeout=60,
            namespace=ns,
        )
    )
    # The soak filled the caches: every job was tracked, the autoscaler scheduled its job
    # (and `soak` itself waited for each failing job's restart and each resize).
    assert peak["job_phases"] >= JOBS
    assert peak["autoscale_due"] >= 1
    for s in samples[1:]:
        assert s.scrape.caches.keys() >= PER_JOB_CACHES
        left = {k: v for k, v in s.scrape.per_job().items() if v}
        assert left == {}, f"round {s.round}: entries kept for deleted jobs: {left}"
        assert s.scrape.series == [], f"round {s.round}: series of deleted jobs"
