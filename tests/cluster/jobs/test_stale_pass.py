"""A pass that decided from a stale copy of the job writes nothing and runs again.

The index can lag behind the operator's own writes (a restart's intent commit is seen
before the status write that follows it). A pass deciding from such a copy once wrote an
old phase beside newer conditions (`Scaling` with `Restarting=True`). Its status write is
now guarded by the version it decided from, against the real API server.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from cluster.gtj import GROUP, PLURAL, VERSION, create_job, get_job, job_body

pytestmark = pytest.mark.cluster


def test_a_pass_from_a_stale_copy_writes_nothing_and_asks_to_run_again(
    cluster: Any, crd: Any, custom: Any, namespace: str
) -> None:
    from gaudi_operator.clients import kube
    from gaudi_operator.jobs.reconciler import Reconciler
    from gaudi_operator.runtime.controller import RetrySoon

    # Suspended: whichever operator runs in this session leaves it with no workers.
    create_job(custom, namespace, job_body("stale", suspend=True))
    stale = copy.deepcopy(get_job(custom, namespace, "stale"))
    stale["status"] = {}  # as the job was before any status write
    # A write this copy does not show (ours, still on its way through the index).
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "stale", {"status": {"restarts": 1}}
    )

    async def one_pass() -> None:
        clients = await kube.connect(str(cluster.kubeconfig))
        try:
            await Reconciler(clients).reconcile(stale, [], True)
        finally:
            await clients.close()

    with pytest.raises(RetrySoon):
        asyncio.run(one_pass())
    assert get_job(custom, namespace, "stale")["status"]["restarts"] == 1
