"""Reads what the preflight checks decide on, from the API server (the operator's async
client) and Prometheus (its httpx client), and runs every check at once.

A check whose reads fail (forbidden, unreachable, timed out) becomes a failed row that
names the error; nothing here raises to the caller.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml

import gaudi_operator
from gaudi_operator import api
from gaudi_operator.clients import credentials, kube
from gaudi_operator.clients.prometheus import PrometheusClient, PromQLError
from gaudi_operator.preflight import checks
from gaudi_operator.preflight.checks import (
    CHECKS,
    CRD_NAME,
    HEALTH_METRICS,
    JOB_VERBS,
    KUEUE_GROUP,
    KUEUE_VERSION,
    DryRun,
    ExporterSeries,
    GaudiNode,
    Result,
    Settings,
    Status,
)

Obj = Mapping[str, Any]
# RBAC's answer, as opposed to an admission plugin's (Pod Security, a webhook).
_RBAC_DENIED = re.compile(r'cannot create resource "pods"')


def packaged_crd() -> dict[str, Any]:
    """The CRD this release ships: crds/ of a source checkout, or the wheel's copy."""
    here = Path(gaudi_operator.__file__).resolve().parent
    for folder in (here / "crds", here.parents[1] / "crds"):
        path = folder / "gauditrainingjobs.yaml"
        if path.exists():
            return dict(yaml.safe_load(path.read_text()))
    raise FileNotFoundError("crds/gauditrainingjobs.yaml is not in this installation")


class Probe:
    """One preflight run's reads; the nodes are read once for the checks that need them."""

    def __init__(self, clients: kube.Clients, settings: Settings, timeout: float) -> None:
        self.clients = clients
        self.settings = settings
        self.timeout = timeout
        self._nodes: asyncio.Future[list[GaudiNode]] | None = None

    # -- HTTP against the API server ---------------------------------------------------------
    async def get(self, path: str) -> dict[str, Any] | None:
        """The object at `path` as JSON; None when it does not exist (404)."""
        try:
            return await self._call("GET", path)
        except kube.ApiError as err:
            if err.status == 404:
                return None
            raise

    async def post(self, path: str, body: Obj) -> dict[str, Any]:
        return await self._call("POST", path, body)

    async def _call(self, method: str, path: str, body: Obj | None = None) -> dict[str, Any]:
        limit = aiohttp.ClientTimeout(total=self.timeout)
        return dict(await self.clients.request(method, path, body=body, client_timeout=limit) or {})

    def nodes(self) -> asyncio.Future[list[GaudiNode]]:
        if self._nodes is None:
            self._nodes = asyncio.ensure_future(self._read_nodes())
        return self._nodes

    async def _read_nodes(self) -> list[GaudiNode]:
        listed = await self.get("/api/v1/nodes?resourceVersion=0") or {}
        return checks.gaudi_nodes(listed.get("items") or [])

    # -- the checks ------------------------------------------------------------------------
    async def crd(self) -> Result:
        served = await self.get(
            f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
        )
        return checks.check_crd(served, packaged_crd())

    async def operator(self) -> Result:
        s = self.settings
        lease = await self.get(
            f"/apis/coordination.k8s.io/v1/namespaces/{s.lease_namespace}/leases/{s.lease_name}"
        )
        return checks.check_operator(lease, datetime.now(UTC), s.lease_namespace, s.lease_name)

    async def gaudi_nodes(self) -> Result:
        return checks.check_gaudi_nodes(await self.nodes(), self.settings.hpus_per_worker)

    async def device_plugin(self) -> Result:
        checks.parse_selector(self.settings.device_plugin_selector)  # a bad one: say so first
        listed = await self.get("/apis/apps/v1/daemonsets") or {}
        return checks.check_device_plugin(
            listed.get("items") or [], self.settings.device_plugin_selector
        )

    async def prometheus(self) -> Result:
        url = self.settings.prometheus_url
        if not url:
            return checks.check_prometheus(url, None, "", 0)
        names = "|".join(HEALTH_METRICS)
        try:
            async with PrometheusClient(url, timeout=self.timeout) as prom:
                samples = await prom.query(f'count by (__name__) ({{__name__=~"{names}"}})')
        except (PromQLError, ValueError) as err:
            return checks.check_prometheus(url, None, str(err), 0)
        series = {s.labels.get("__name__", ""): int(s.value) for s in samples}
        reading = ExporterSeries(series, series.get(checks.CARD_METRIC, 0))
        try:
            hpus = sum(n.capacity for n in await self.nodes())
        except kube.ApiError:  # the nodes' row says why; compare with nothing here
            hpus = 0
        return checks.check_prometheus(url, reading, "", hpus)

    async def scale_out(self) -> Result:
        s = self.settings
        if not s.multi_node:
            return checks.check_scale_out([], s.scale_out_label, False)
        return checks.check_scale_out(await self.nodes(), s.scale_out_label, True)

    async def hugepages(self) -> Result:
        s = self.settings
        if s.hugepages_mi_per_hpu <= 0:
            return checks.check_hugepages([], 0, s.hpus_per_worker)
        return checks.check_hugepages(await self.nodes(), s.hugepages_mi_per_hpu, s.hpus_per_worker)

    async def pod_security(self) -> Result:
        ns = self.settings.namespace
        dry_run = await self.dry_run_worker()
        try:
            ns_obj = await self.get(f"/api/v1/namespaces/{ns}")
        except kube.ApiError as err:
            if err.status != 403 or dry_run.unanswered:
                raise  # neither answer: the row says why
            # A tenant may not read namespaces; the dry run answered all the same.
            return checks.check_pod_security(ns, {}, dry_run, labels_known=False)
        return checks.check_pod_security(ns, ns_obj, dry_run)

    async def dry_run_worker(self) -> DryRun:
        ns = self.settings.namespace
        try:
            await self.post(
                f"/api/v1/namespaces/{ns}/pods?dryRun=All", checks.dry_run_pod(self.settings)
            )
        except kube.ApiError as err:
            message = kube.api_message(err)
            if err.status == 404:  # no such namespace: the namespace read says so
                return DryRun(False, message, unanswered=True)
            if err.status == 403 and _RBAC_DENIED.search(message):
                return DryRun(False, "you may not create pods here", unanswered=True)
            if err.status in (400, 403, 409, 422):
                return DryRun(False, message)
            raise
        return DryRun(True)

    async def access(self) -> Result:
        s = self.settings
        reviews = await asyncio.gather(*(self._review(verb) for verb in JOB_VERBS))
        answers = dict(zip(JOB_VERBS, reviews, strict=True))
        subject = s.user or await self._whoami()
        return checks.check_access(answers, s.namespace, subject)

    async def _review(self, verb: str) -> bool:
        s = self.settings
        attributes = {
            "namespace": s.namespace,
            "verb": verb,
            "group": api.GROUP,
            "resource": api.PLURAL,
        }
        if s.user:
            kind, spec = "SubjectAccessReview", {"user": s.user, "groups": list(s.groups)}
        else:
            kind, spec = "SelfSubjectAccessReview", {}
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": kind,
            "spec": {**spec, "resourceAttributes": attributes},
        }
        answer = await self.post(f"/apis/authorization.k8s.io/v1/{kind.lower()}s", review)
        return bool((answer.get("status") or {}).get("allowed"))

    async def _whoami(self) -> str:
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        try:
            answer = await self.post("/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
        except kube.ApiError:
            return "you"
        name = ((answer.get("status") or {}).get("userInfo") or {}).get("username")
        return f"you ({name})" if name else "you"

    async def kueue(self) -> Result:
        s = self.settings
        if not s.queue:
            return checks.check_kueue("", s.namespace, None, None, None)
        group = await self.get(f"/apis/{KUEUE_GROUP}")
        versions = [v.get("version", "") for v in (group or {}).get("versions") or []]
        local = cluster = None
        if KUEUE_VERSION in versions:
            base = f"/apis/{KUEUE_GROUP}/{KUEUE_VERSION}"
            local = await self.get(
                f"{base}/namespaces/{s.namespace}/localqueues/{quote(s.queue, safe='')}"
            )
            cq = ((local or {}).get("spec") or {}).get("clusterQueue")
            if cq:
                cluster = await self.get(f"{base}/clusterqueues/{quote(cq, safe='')}")
        return checks.check_kueue(s.queue, s.namespace, versions or None, local, cluster)

    def checks(self) -> dict[str, Callable[[], Awaitable[Result]]]:
        return {
            "crd": self.crd,
            "operator": self.operator,
            "gaudi-nodes": self.gaudi_nodes,
            "device-plugin": self.device_plugin,
            "prometheus": self.prometheus,
            "scale-out": self.scale_out,
            "hugepages": self.hugepages,
            "pod-security": self.pod_security,
            "access": self.access,
            "kueue": self.kueue,
        }


def _read_fix(check: str) -> str:
    return (
        f"run gaudi3 preflight with a kubeconfig that may read this (a cluster admin's; the "
        f"chart's preflight pod has the RBAC it needs), or --skip {check}"
    )


async def guarded(check: str, run: Callable[[], Awaitable[Result]], budget: float) -> Result:
    """The check's row, or a failed row naming why it could not be checked (within
    `budget` seconds)."""
    try:
        return await asyncio.wait_for(run(), budget)
    except kube.ApiError as err:
        what = f"HTTP {err.status}: {kube.api_message(err)}"
        return checks.result(check, Status.FAIL, f"could not check: {what}", _read_fix(check))
    except (aiohttp.ClientError, OSError, TimeoutError, credentials.ConfigError) as err:
        return checks.result(
            check,
            Status.FAIL,
            f"could not reach the API server: {err.__class__.__name__}: {err}",
            "check the kubeconfig (--kubeconfig, KUBECONFIG) and that the API server answers",
        )
    except ValueError as err:  # a bad option value, e.g. the device plugin selector
        return checks.result(check, Status.FAIL, str(err), "fix the option")


async def run(
    settings: Settings, kubeconfig: str | None = None, *, request_timeout: float = 10.0
) -> list[Result]:
    """Every check's row, in the table's order; each request gets `request_timeout`
    seconds, a check three times that."""
    try:
        clients = await kube.connect(kubeconfig, pool_size=16)
    except Exception as err:  # no kubeconfig, a broken one: every row says so
        found = f"no API server: {err.__class__.__name__}: {err}"
        fix = "pass --kubeconfig, or run in a cluster (the chart's preflight pod)"
        return [checks.result(c, Status.FAIL, found, fix) for c, _ in CHECKS]
    try:
        probe = Probe(clients, settings, request_timeout)
        table = probe.checks()
        rows = []
        for check, _ in CHECKS:
            if check in settings.skip:
                rows.append(_skipped(check))
            else:
                rows.append(guarded(check, table[check], request_timeout * 3))
        return list(await asyncio.gather(*rows))
    finally:
        await clients.close()


async def _skipped(check: str) -> Result:
    return checks.result(check, Status.SKIP, "skipped (--skip)")
