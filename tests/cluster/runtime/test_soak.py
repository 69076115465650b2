"""The short soak: jobs created and deleted in rounds (plain, autoscaled, failing once)
leave nothing behind in any of the operator's per-job maps or per-job metric series.

The real operator watches only the soak's namespace (so other tests' jobs never count),
with the autoscaler on the cluster's Prometheus; the soak itself is the benchmark's
(`gaudi3 benchmark soak`), a few rounds of a few jobs instead of thousands.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.gtj import OperatorProcess
from gaudi_devtools.benchmarks.soak import Operator, soak

ROUNDS, JOBS, SEED = 3, 3, 11  # each round: one plain, one autoscaled, one failing once
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
}


@pytest.fixture
def soak_operator(operator: OperatorProcess, cluster: Any) -> Iterator[tuple[Operator, str]]:
    """The session's operator, restarted for one namespace with a 1 s autoscaler loop, and
    restarted as it was afterwards."""
    ns = f"soak-{uuid.uuid4().hex[:6]}"
    operator.env["GAUDI3_AUTOSCALE_INTERVAL_SECONDS"] = "1"
    operator.restart("--namespace", ns, "--prometheus-url", cluster.prometheus_url)
    try:
        assert operator.proc is not None
        yield Operator(operator.proc, operator.metrics_port, operator.log), ns
    finally:
        operator.env.pop("GAUDI3_AUTOSCALE_INTERVAL_SECONDS", None)
        operator.restart()


def test_deleted_jobs_leave_no_entry_in_any_per_job_cache(
    soak_operator: tuple[Operator, str], cluster: Any, hpus_free: Any
) -> None:
    op, ns = soak_operator
    hpus_free()
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
