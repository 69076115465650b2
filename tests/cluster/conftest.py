"""Fixtures for GaudiTrainingJob tests: the CRD installed, and the operator running as a
real `gaudi3 operator` process that a test can SIGKILL and start again."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.gtj import CRD, GROUP, MANAGED, PLURAL, OperatorProcess, kubectl_run
from conftest import wait_for
from gaudi_devtools.crd import established


@pytest.fixture(scope="session")
def crd(cluster: Any) -> Path:
    kubectl_run(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(CRD))

    # Polled: `kubectl wait` fails outright while a new CRD has no conditions at all yet.
    def is_established() -> bool:
        got = kubectl_run(cluster, "get", f"crd/{PLURAL}.{GROUP}", "-o", "json")
        return established(json.loads(got))

    wait_for(is_established, timeout=60, interval=0.5, what="the CRD established")

    # The OpenAPI document (kubectl explain, field validation) lags Established a little.
    def explained() -> bool:
        try:
            return "restartStrategy" in kubectl_run(cluster, "explain", "gtj.spec.failurePolicy")
        except AssertionError:
            return False

    wait_for(explained, timeout=60, interval=0.5, what="the CRD in the OpenAPI document")
    return CRD


@pytest.fixture(scope="session")
def operator(
    cluster: Any, crd: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(Path(cluster.kubeconfig), log)
    op.start()
    yield op
    op.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and "operator" in getattr(item, "fixturenames", ()):
        op = getattr(item, "funcargs", {}).get("operator")
        if op is not None:
            rep.sections.append(("gaudi3 operator log (tail)", op.tail(120)))


@pytest.fixture
def hpus_free(core: Any) -> Callable[[], None]:
    """Wait until no worker pod of an earlier test still holds HPUs (namespaces are
    deleted asynchronously, and the cluster has only 32)."""

    def wait() -> None:
        def free() -> bool:
            pods = core.list_pod_for_all_namespaces(label_selector=MANAGED).items
            return not [p for p in pods if p.status.phase in ("Pending", "Running")]

        with contextlib.suppress(AssertionError):
            wait_for(free, timeout=90, interval=1, what="HPUs freed by earlier tests")

    return wait


# --- autoscaling: the operator with a fast loop (per module), and a load exporter ---------
@pytest.fixture(scope="module")
def autoscaler(operator: Any, cluster: Any) -> Iterator[Any]:
    from cluster.autoscaling.support import autoscaling_operator

    with autoscaling_operator(operator, cluster) as op:
        yield op


@pytest.fixture
def load(cluster: Any, namespace: str) -> Iterator[Any]:
    from cluster.autoscaling.support import exporter

    with exporter(cluster, namespace) as e:
        yield e
