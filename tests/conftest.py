"""Shared test harness: the real local cluster, a namespace per test, kubectl.

Cluster tests start their own cluster (named ``pytest-<pid>``) the first time one asks
for it, unless ``GAUDI3_TEST_CLUSTER`` names a running local cluster to reuse
(``gaudi3 cluster up --name dev`` then ``GAUDI3_TEST_CLUSTER=dev make test``).
When a cluster test fails, the tails of the component logs are added to its report.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

# The tests parse the CRD (190 KB) and the rendered chart (440 KB) over and over: PyYAML's
# pure-Python loader takes 1.7 s for the chart, libyaml's 0.17 s, for the same documents.
if getattr(yaml, "__with_libyaml__", False):
    yaml.safe_load = functools.partial(yaml.load, Loader=yaml.CSafeLoader)  # type: ignore[assignment]
    yaml.safe_load_all = functools.partial(yaml.load_all, Loader=yaml.CSafeLoader)  # type: ignore[assignment]

_DIR_MARKERS = {"unit": "unit", "cluster": "cluster", "training": "training"}


_TESTS = Path(__file__).resolve().parent
REALNODES_UNIT = "tests/cluster/realnodes/"
TRAINING_UNIT = "tests/training/"
_TEST_CLUSTER = re.compile(r"(?:pytest|chaos|helm|crd-upgrade)-(\d+)(?:-.*)?")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The first folder under tests/ names a test's kind, so `-m unit` never starts a
    # cluster by accident (tests/unit/failover/… is a unit test).
    for item in items:
        path = Path(str(item.fspath)).resolve()
        parts = path.relative_to(_TESTS).parts if path.is_relative_to(_TESTS) else ()
        kind = _DIR_MARKERS.get(parts[0]) if len(parts) > 1 else None
        if kind and not item.get_closest_marker(kind):
            item.add_marker(getattr(pytest.mark, kind))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # The longest group first: not the tail one worker runs alone at the end.
        items.sort(
            key=lambda i: (
                _work_unit(i.nodeid) != REALNODES_UNIT,
                _work_unit(i.nodeid) != TRAINING_UNIT,
            )
        )
    # `make test` runs the tests marked serial in a second, one-process run.
    serial = os.environ.get("GAUDI3_SERIAL", "")
    if serial in ("skip", "only"):
        wanted = serial == "skip"  # skip: keep what is not serial
        keep = [i for i in items if (i.get_closest_marker("serial") is None) == wanted]
        dropped = [i for i in items if (i.get_closest_marker("serial") is None) != wanted]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep


def _work_unit(nodeid: str) -> str:
    """The tests one pytest-xdist worker runs together: a module, the whole real-node
    package (one cluster of real nodes, its down test last), or the whole training package
    (real torch on the CPU: one such test at a time, so that three workers on two cores
    never starve two trainings at once; a survivor then missed its peer's death once)."""
    path = nodeid.split("::")[0]
    for unit in (REALNODES_UNIT, TRAINING_UNIT):
        if path.startswith(unit):
            return unit
    return path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`make test` runs three workers, each with its own session cluster: most cluster tests
    wait on the control plane's timers, so three overlap well on two cores. A module's tests
    stay on one worker, so its module fixtures (an operator, a cluster of its own) start
    once and its tests keep their order. (xdist's own `loadgroup` marks do not take with
    pytest 9.2, which no longer reads the node id xdist rewrites.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    return ByWorkUnit(config, log)


def _sweep_abandoned_test_clusters() -> None:
    """Stop clusters left by test runs that were killed before their teardown."""
    from gaudi_devtools.cluster import Cluster
    from gaudi_devtools.cluster.cluster import CLUSTERS

    for d in CLUSTERS.iterdir() if CLUSTERS.exists() else []:
        # pytest-<pid>[-<what>], and the modules' own: chaos-, helm-, crd-upgrade-<pid>
        # (also left when a start fails before the fixture's teardown is armed).
        m = _TEST_CLUSTER.fullmatch(d.name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            Cluster(d.name).delete()


@pytest.fixture(scope="session")
def cluster() -> Iterator[object]:
    from gaudi_devtools.cluster import Cluster
    from gaudi_devtools.cluster.cluster import Settings

    reuse = os.environ.get("GAUDI3_TEST_CLUSTER")
    if reuse:
        c = Cluster(reuse)
        if not c.healthy():
            pytest.fail(f"GAUDI3_TEST_CLUSTER={reuse}: that cluster is not up")
        yield c
        return
    _sweep_abandoned_test_clusters()
    c = Cluster(f"pytest-{os.getpid()}", say=lambda m: print(f"[cluster] {m}", flush=True))
    c.up(Settings(gaudi_nodes=4, hpus_per_node=8, node_monitor_grace_seconds=20))
    try:
        yield c
    finally:
        c.delete()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    # "real": the real-node cluster of tests/cluster/realnodes/.
    for fixture in ("cluster", "real"):
        if not rep.failed or fixture not in getattr(item, "fixturenames", ()):
            continue
        c = item.funcargs.get(fixture) if hasattr(item, "funcargs") else None
        if c is not None:
            from gaudi_devtools.cluster.cluster import COMPONENTS

            extra = [n for n in c.procs.names() if n not in COMPONENTS]  # real nodes, CoreDNS
            for comp in (*COMPONENTS, "supervisor", *extra):
                rep.sections.append((f"{comp} log (tail)", c._tail(comp, 25)))


@pytest.fixture(scope="session")
def api_client(cluster):  # type: ignore[no-untyped-def]
    from kubernetes import config

    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="session")
def core(api_client):  # type: ignore[no-untyped-def]
    from kubernetes import client

    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def custom(api_client):  # type: ignore[no-untyped-def]
    from kubernetes import client

    return client.CustomObjectsApi(api_client)


@pytest.fixture(scope="session")
def apps(api_client):  # type: ignore[no-untyped-def]
    from kubernetes import client

    return client.AppsV1Api(api_client)


@pytest.fixture
def namespace(core) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # pods are refused until its default SA exists
        try:
            core.read_namespaced_service_account("default", name)
            break
        except ApiException:
            time.sleep(0.2)
    yield name
    with contextlib.suppress(ApiException):
        core.delete_namespace(name)


@pytest.fixture
def kubectl(cluster) -> Callable[..., subprocess.CompletedProcess[str]]:  # type: ignore[no-untyped-def]
    def run(
        *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        out = cluster.kubectl(*args, input=input, check=False, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{out.stderr}")
        return out

    return run


def wait_for(
    predicate: Callable[[], object],
    timeout: float = 30,
    interval: float = 0.25,
    what: str = "condition",
) -> object:
    """Poll until ``predicate`` returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
