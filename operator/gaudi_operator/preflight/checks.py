"""The preflight checks, pure: each turns what `preflight.probe` read (API objects as
dicts, Prometheus counts, review answers) into one row: pass, warn, fail or skip, what was
found, and, for anything but a pass, how to fix it. Intel's sources are cited where a rule
comes from them; docs/gaudi.md ("Preflight") has the table of checks.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from gaudi_operator import api
from gaudi_operator.api.times import parse_rfc3339
from gaudi_operator.jobs import manifests
from gaudi_operator.jobs.gaudi import (
    DEFAULT_SCALE_OUT_LABEL,
    HUGEPAGES_MI_PER_HPU,
    SYS_NICE,
    GaudiSettings,
    NodeLabel,
)

Obj = Mapping[str, Any]

CRD_NAME = f"{api.PLURAL}.{api.GROUP}"
# The pod label of the device plugin's DaemonSet in Intel's manifests
# (HabanaAI/habanalabs-k8s-device-plugin habana-k8s-device-plugin.yaml: DaemonSet
# habanalabs-device-plugin-daemonset, namespace habana-system, pods `name:
# habanalabs-device-plugin-ds`). The Intel Gaudi Base Operator names its own; pass its
# pod labels with --device-plugin-selector.
DEVICE_PLUGIN_SELECTOR = "name=habanalabs-device-plugin-ds"
DEVICE_PLUGIN_MANIFEST = (
    "https://vault.habana.ai/artifactory/docker-k8s-device-plugin/habana-k8s-device-plugin.yaml"
)
# The exporter's series the operator's default HPU health query reads (docs/gaudi.md,
# "Health signals from Intel's metric exporter").
HEALTH_METRICS = (
    "habanalabs_pending_rows_with_double_bit_ecc_errors",
    "habanalabs_temperature_onchip",
    "habanalabs_temperature_threshold_shutdown",
    "habanalabs_nic_port_status",
)
# One series per card: counts the cards Prometheus has.
CARD_METRIC = "habanalabs_temperature_onchip"
PSA_ENFORCE = "pod-security.kubernetes.io/enforce"
# Capabilities the baseline Pod Security Standard lets a container add; restricted allows
# only NET_BIND_SERVICE. Both forbid host namespaces (hostIPC). Kubernetes docs, "Pod
# Security Standards" (kubernetes.io/docs/concepts/security/pod-security-standards/).
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
# Verbs a job's author needs; only `create` fails the row.
JOB_VERBS = ("create", "get", "list", "watch", "delete")
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"  # the Workloads the operator writes (queueing.policy)
DRY_RUN_IMAGE = "gaudi3-preflight.invalid/dry-run:never-pulled"
# How many names a row lists before "and N more".
_LIST_LIMIT = 6


class Status(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Result:
    """One row of the preflight table."""

    check: str
    title: str
    status: Status
    found: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "check": self.check,
            "title": self.title,
            "status": self.status.value,
            "found": self.found,
            "fix": self.fix,
        }


# The checks in the order of the table: id, title.
CHECKS: tuple[tuple[str, str], ...] = (
    ("crd", "GaudiTrainingJob CRD"),
    ("operator", "operator holds its Lease"),
    ("gaudi-nodes", "Gaudi nodes (habana.ai/gaudi)"),
    ("device-plugin", "Habana device plugin"),
    ("prometheus", "Prometheus has Intel's exporter"),
    ("scale-out", "scale-out readiness label"),
    ("hugepages", "huge pages (hugepages-2Mi)"),
    ("pod-security", "Pod Security allows hostIPC, SYS_NICE"),
    ("access", "may create GaudiTrainingJobs"),
    ("kueue", "Kueue queue"),
)
TITLES = dict(CHECKS)


def result(check: str, status: Status, found: str, fix: str = "") -> Result:
    return Result(check, TITLES[check], status, found, "" if status == Status.PASS else fix)


def exit_code(results: Iterable[Result]) -> int:
    """1 when any check failed; warnings and skips do not fail the preflight."""
    return 1 if any(r.status == Status.FAIL for r in results) else 0


@dataclass(frozen=True)
class Settings:
    """What the cluster is checked against; the defaults are the operator's and chart's."""

    namespace: str = "default"
    lease_name: str = "gaudi-operator"
    lease_namespace: str = "gaudi-system"
    device_plugin_selector: str = DEVICE_PLUGIN_SELECTOR
    prometheus_url: str = ""
    multi_node: bool = False
    scale_out_label: NodeLabel | None = DEFAULT_SCALE_OUT_LABEL
    hpus_per_worker: int = 8
    hugepages_mi_per_hpu: int = HUGEPAGES_MI_PER_HPU
    queue: str = ""
    # Whose access to check (a SubjectAccessReview); empty: the caller's own.
    user: str = ""
    groups: tuple[str, ...] = ()
    skip: frozenset[str] = field(default_factory=frozenset)


def _listed(items: Sequence[str], limit: int = _LIST_LIMIT) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def _get(obj: Obj | None, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def _condition(obj: Obj | None, ctype: str) -> Obj | None:
    for cond in _get(obj, "status", "conditions") or ():
        if cond.get("type") == ctype:
            return cond
    return None


# --- the CRD -------------------------------------------------------------------------------
_VERSION_FIELDS = (
    "name",
    "served",
    "storage",
    "deprecated",
    "deprecationWarning",
    "schema",
    "subresources",
    "additionalPrinterColumns",
    "selectableFields",
)


def _canonical(value: Any) -> Any:
    # Helm and the API server may write a whole number as a float (8.0): the same schema.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def schema_digest(crd: Obj) -> str:
    """A short digest of the CRD's versions (schemas, subresources, columns): equal for
    the file in crds/ and the object the API server serves from it."""
    versions = sorted(
        (
            {k: v for k, v in version.items() if k in _VERSION_FIELDS and v not in (None, False)}
            for version in _get(crd, "spec", "versions") or ()
        ),
        key=lambda v: str(v.get("name")),
    )
    text = json.dumps(_canonical(versions), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


_CRD_FIX_INSTALL = (
    "install it with the chart (helm upgrade --install ... crds.enabled=true) or "
    "kubectl apply --server-side -f crds/gauditrainingjobs.yaml"
)


def check_crd(served: Obj | None, expected: Obj) -> Result:
    """The CRD is there, serves and stores v1alpha1, is established, and carries this
    release's schema (its digest equals the one of the CRD this gaudi3 ships)."""
    if served is None:
        return result("crd", Status.FAIL, f"no CRD {CRD_NAME}", _CRD_FIX_INSTALL)
    versions = {v.get("name"): v for v in _get(served, "spec", "versions") or ()}
    mine = versions.get(api.VERSION)
    if mine is None or not mine.get("served") or not mine.get("storage"):
        have = ", ".join(
            f"{n} ({'served' if v.get('served') else 'not served'}"
            f"{', storage' if v.get('storage') else ''})"
            for n, v in versions.items()
        )
        return result(
            "crd",
            Status.FAIL,
            f"{CRD_NAME} does not serve and store {api.VERSION}: {have or 'no versions'}",
            _CRD_FIX_INSTALL,
        )
    established = _condition(served, "Established")
    if established is None or established.get("status") != "True":
        why = (established or {}).get("message") or "no Established condition yet"
        return result(
            "crd",
            Status.FAIL,
            f"{CRD_NAME} is not established: {why}",
            f"kubectl describe crd {CRD_NAME} (its NamesAccepted condition says why)",
        )
    have, want = schema_digest(served), schema_digest(expected)
    if have != want:
        return result(
            "crd",
            Status.FAIL,
            f"{CRD_NAME} {api.VERSION} has schema {have}; this release's is {want}",
            "upgrade the CRD to this release: helm upgrade with crds.enabled=true, or "
            "kubectl apply --server-side -f crds/gauditrainingjobs.yaml (or run the "
            "gaudi3 of the installed release)",
        )
    return result("crd", Status.PASS, f"{CRD_NAME} {api.VERSION} served, schema {have}")


# --- the operator's Lease --------------------------------------------------------------------
def check_operator(lease: Obj | None, now: datetime, namespace: str, name: str) -> Result:
    """Some replica holds the Lease and renewed it within its duration (renewTime +
    leaseDurationSeconds is not past, by this machine's clock)."""
    ref = f"Lease {namespace}/{name}"
    find = (
        f"kubectl -n {namespace} get deploy,pods -l app.kubernetes.io/name=gaudi-operator "
        f"and its logs; pass --lease-namespace/--lease-name if the operator runs elsewhere "
        f"(the chart's Lease is the release's full name in its namespace)"
    )
    if lease is None:
        return result(
            "operator",
            Status.FAIL,
            f"no {ref}: no operator runs with leader election under that name",
            f"install the chart, or start it; {find}",
        )
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if not holder:
        return result(
            "operator",
            Status.FAIL,
            f"{ref} has no holder: the last leader released it and no replica took it over",
            f"start the operator (kubectl -n {namespace} scale deploy ... --replicas=2); {find}",
        )
    renewed = parse_rfc3339(spec.get("renewTime") or spec.get("acquireTime"))
    duration = int(spec.get("leaseDurationSeconds") or 0)
    if renewed is None:
        return result("operator", Status.FAIL, f"{ref} held by {holder} was never renewed", find)
    expires = renewed + timedelta(seconds=duration)
    age = (now - renewed).total_seconds()
    if expires < now:
        return result(
            "operator",
            Status.FAIL,
            f"{ref} held by {holder} expired {(now - expires).total_seconds():.0f}s ago "
            f"(renewed {age:.0f}s ago, duration {duration}s): the leader is gone or hung",
            f"the operator is not running or cannot reach the API server: {find}",
        )
    return result(
        "operator",
        Status.PASS,
        f"{ref} held by {holder}, renewed {max(age, 0):.0f}s ago (duration {duration}s)",
    )


# --- nodes -----------------------------------------------------------------------------------
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")
_BINARY = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def mebibytes(quantity: Any) -> int:
    """A Kubernetes byte quantity ("64Gi", "28992Mi", "1e9" is not used for memory) in
    whole MiB; 0 for none or garbage."""
    m = _QUANTITY.match(str(quantity or "0").strip())
    if not m:
        return 0
    unit = _BINARY.get(m.group(2)) or _DECIMAL.get(m.group(2))
    if unit is None:
        return 0
    return int(float(m.group(1)) * unit) // 2**20


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


@dataclass(frozen=True)
class GaudiNode:
    """A node that advertises habana.ai/gaudi, as the checks need it."""

    name: str
    ready: bool
    schedulable: bool
    capacity: int
    allocatable: int
    hugepages_mi: int
    labels: Mapping[str, str]


def gaudi_nodes(nodes: Iterable[Obj]) -> list[GaudiNode]:
    """The nodes whose capacity has habana.ai/gaudi (the device plugin registered cards)."""
    found = []
    for node in nodes:
        status = node.get("status") or {}
        capacity = _int((status.get("capacity") or {}).get(api.GAUDI_RESOURCE))
        if capacity <= 0:
            continue
        ready = _condition(node, "Ready")
        allocatable = status.get("allocatable") or {}
        found.append(
            GaudiNode(
                name=str(_get(node, "metadata", "name")),
                ready=ready is not None and ready.get("status") == "True",
                schedulable=not _get(node, "spec", "unschedulable"),
                capacity=capacity,
                allocatable=_int(allocatable.get(api.GAUDI_RESOURCE)),
                hugepages_mi=mebibytes(allocatable.get(api.HUGEPAGES_RESOURCE)),
                labels=dict(_get(node, "metadata", "labels") or {}),
            )
        )
    return sorted(found, key=lambda n: n.name)


def check_gaudi_nodes(nodes: Sequence[GaudiNode], hpus_per_worker: int) -> Result:
    """Gaudi nodes exist, at least one (Ready, schedulable) has a worker's cards, and none
    has cards the device plugin reported Unhealthy (allocatable below capacity)."""
    if not nodes:
        return result(
            "gaudi-nodes",
            Status.FAIL,
            f"no node advertises {api.GAUDI_RESOURCE}",
            f"deploy Intel's device plugin on the Gaudi nodes (kubectl create -f "
            f"{DEVICE_PLUGIN_MANIFEST}, or the Intel Gaudi Base Operator) and check the "
            f"driver on the node (hl-smi)",
        )
    capacity = sum(n.capacity for n in nodes)
    allocatable = sum(n.allocatable for n in nodes)

    def describe(n: GaudiNode) -> str:
        notes = [] if n.ready else ["NotReady"]
        if not n.schedulable:
            notes.append("cordoned")
        return f"{n.name} {n.allocatable}/{n.capacity}" + (
            f" ({', '.join(notes)})" if notes else ""
        )

    found = (
        f"{len(nodes)} node{'s' if len(nodes) > 1 else ''}, {allocatable} of {capacity} HPUs "
        f"allocatable: {_listed([describe(n) for n in nodes])}"
    )
    fits = [n for n in nodes if n.ready and n.schedulable and n.allocatable >= hpus_per_worker]
    if not fits:
        return result(
            "gaudi-nodes",
            Status.FAIL,
            f"{found}; none Ready and schedulable with {hpus_per_worker} allocatable",
            "bring the nodes back (kubectl describe node), or check --hpus-per-worker "
            "(a job's spec.hpusPerWorker: 1, 2, 4 or 8)",
        )
    unhealthy = [
        f"{n.name} ({n.capacity - n.allocatable})" for n in nodes if n.allocatable < n.capacity
    ]
    unusable = [n.name for n in nodes if not (n.ready and n.schedulable)]
    if unhealthy:
        return result(
            "gaudi-nodes",
            Status.WARN,
            f"{found}; unhealthy cards on {_listed(unhealthy)}",
            "the device plugin reports these cards Unhealthy (capacity above allocatable): "
            "check hl-smi and the device plugin's log on those nodes",
        )
    if unusable:
        return result(
            "gaudi-nodes",
            Status.WARN,
            found,
            f"{_listed(unusable)} cannot take workers: kubectl describe node",
        )
    return result("gaudi-nodes", Status.PASS, found)


def parse_selector(text: str) -> dict[str, str | None]:
    """An equality label selector, `k=v,k2=v2` (`k` alone: the key with any value)."""
    wanted: dict[str, str | None] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        value = value[1:] if value.startswith("=") else value  # k==v
        wanted[key.strip()] = value.strip() if sep else None
    if not wanted or "" in wanted:
        raise ValueError(f"{text!r}: expected key=value[,key=value] (or key)")
    return wanted


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str | None]) -> bool:
    return all(k in labels and (v is None or labels[k] == v) for k, v in wanted.items())


def check_device_plugin(daemonsets: Iterable[Obj], selector: str) -> Result:
    """A DaemonSet whose pods carry the device plugin's labels exists and its pods are
    ready on every node it schedules to."""
    wanted = parse_selector(selector)
    matched, named = [], []
    for ds in daemonsets:
        labels = _get(ds, "spec", "template", "metadata", "labels") or {}
        ref = f"{_get(ds, 'metadata', 'namespace')}/{_get(ds, 'metadata', 'name')}"
        if _matches(labels, wanted):
            matched.append((ref, ds.get("status") or {}))
        elif re.search(r"(habana|gaudi).*device-plugin|device-plugin.*(habana|gaudi)", ref):
            named.append(ref)
    if not matched:
        hint = f"; DaemonSets named like one: {_listed(named)}" if named else ""
        return result(
            "device-plugin",
            Status.FAIL,
            f"no DaemonSet whose pods carry {selector}{hint}",
            f"deploy Intel's device plugin (kubectl create -f {DEVICE_PLUGIN_MANIFEST}, or "
            f"the Intel Gaudi Base Operator), or pass --device-plugin-selector with your "
            f"device plugin's pod labels",
        )
    rows, short = [], []
    for ref, status in matched:
        desired = _int(status.get("desiredNumberScheduled"))
        ready = _int(status.get("numberReady"))
        rows.append(f"{ref}: {ready}/{desired} pods ready")
        if desired == 0 or ready < desired:
            short.append(ref)
    found = "; ".join(rows)
    if short:
        return result(
            "device-plugin",
            Status.WARN,
            found,
            f"kubectl -n {short[0].split('/')[0]} describe daemonset {short[0].split('/')[1]} "
            f"(a pod not ready, or no node matches its node selector)",
        )
    return result("device-plugin", Status.PASS, found)


# --- Prometheus ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExporterSeries:
    """What Prometheus answered: series per health metric, and cards (one series each of
    CARD_METRIC)."""

    series: Mapping[str, int]
    cards: int


def check_prometheus(
    url: str, reading: ExporterSeries | None, error: str, gaudi_hpus: int
) -> Result:
    """The configured Prometheus answers and has the exporter's series the operator's HPU
    health query reads, for as many cards as the nodes advertise."""
    scrape_fix = (
        "deploy Intel's Prometheus Metric Exporter on the Gaudi nodes (the Intel Gaudi Base "
        "Operator installs it; or HabanaAI/gaudi-metric-exporter deploy/manifests) and have "
        "this Prometheus scrape it (its ServiceMonitor)"
    )
    if not url:
        return result(
            "prometheus",
            Status.WARN,
            "no Prometheus URL: autoscaling, stall detection and the exporter's HPU health "
            "checks have nothing to query",
            "pass --prometheus-url (the operator's --prometheus-url, chart value prometheusURL)",
        )
    if reading is None:
        return result(
            "prometheus",
            Status.FAIL,
            f"{url}: {error}",
            "check the URL (chart value prometheusURL; from a workstation, kubectl "
            "port-forward to it and pass --prometheus-url http://127.0.0.1:PORT)",
        )
    missing = [m for m in HEALTH_METRICS if not reading.series.get(m)]
    if len(missing) == len(HEALTH_METRICS):
        return result(
            "prometheus",
            Status.FAIL,
            f"{url} answers, but has no series of Intel's exporter ({', '.join(HEALTH_METRICS)})",
            scrape_fix,
        )
    found = f"{url}: habanalabs_* series for {reading.cards} cards"
    if missing:
        return result(
            "prometheus",
            Status.WARN,
            f"{found}; missing {', '.join(missing)}",
            "the HPU health query reads these; check the exporter's version and its scrape",
        )
    if reading.cards < gaudi_hpus:
        return result(
            "prometheus",
            Status.WARN,
            f"{found}; the nodes advertise {gaudi_hpus}",
            "run the exporter on every Gaudi node and scrape each (its DaemonSet and "
            "ServiceMonitor); faults on the others go unseen",
        )
    return result("prometheus", Status.PASS, f"{found} (nodes advertise {gaudi_hpus})")


# --- scale-out readiness ------------------------------------------------------------------
def check_scale_out(
    nodes: Sequence[GaudiNode], label: NodeLabel | None, multi_node: bool
) -> Result:
    """With multi-node jobs expected, at least two Gaudi nodes carry the label Intel's
    network operator sets once their scale-out NICs are configured (intel/network-operator
    README), which the operator's gate requires of multi-worker jobs."""
    if not multi_node:
        return result(
            "scale-out",
            Status.SKIP,
            "single-node jobs only (pass --multi-node to check for multi-node jobs)",
        )
    if label is None:
        return result(
            "scale-out",
            Status.WARN,
            "the scale-out gate is off (--scale-out-label ''): multi-node workers may land on "
            "nodes whose Gaudi scale-out NICs are not configured",
            "name the readiness label (chart gaudi.scaleOut.readyLabel) unless the jobs "
            "scale out over host NICs",
        )
    ready = [n.name for n in nodes if label.on(n.labels)]
    others = [n.name for n in nodes if not label.on(n.labels)]
    found = f"{len(ready)} of {len(nodes)} Gaudi nodes carry {label.text}"
    if others:
        found += f"; not: {_listed(others)}"
    fix = (
        f"configure the nodes' Gaudi scale-out network with Intel's network operator (it "
        f"labels ready nodes), or label the ready ones: kubectl label node NAME "
        f"{label.text if label.value is not None else label.key + '=true'}; or pass the "
        f"operator's label (--scale-out-label, chart gaudi.scaleOut.readyLabel)"
    )
    if not ready:
        return result("scale-out", Status.FAIL, found, fix)
    if len(ready) < 2:
        return result("scale-out", Status.WARN, f"{found}: a multi-node job needs two", fix)
    return result("scale-out", Status.PASS, found)


# --- huge pages ----------------------------------------------------------------------------
def check_hugepages(nodes: Sequence[GaudiNode], mi_per_hpu: int, hpus_per_worker: int) -> Result:
    """Gaudi nodes have the huge pages a worker requests by default: mi_per_hpu x HPUs
    (docs/gaudi.md, "Huge pages": 3624Mi a card from Intel's own 8-card pods)."""
    if mi_per_hpu <= 0:
        return result(
            "hugepages", Status.SKIP, "workers request no huge pages (--hugepages-mi-per-hpu 0)"
        )
    need = mi_per_hpu * hpus_per_worker
    if not nodes:
        return result("hugepages", Status.SKIP, "no Gaudi node to check")
    short = [n for n in nodes if n.hugepages_mi < need]
    ok = len(nodes) - len(short)
    found = (
        f"{ok} of {len(nodes)} Gaudi nodes have {need}Mi {api.HUGEPAGES_RESOURCE} allocatable "
        f"({mi_per_hpu}Mi x {hpus_per_worker} HPUs)"
    )
    if short:
        found += "; short: " + _listed([f"{n.name} {n.hugepages_mi}Mi" for n in short])
    fix = (
        f"reserve 2 MiB huge pages on the Gaudi nodes (sysctl vm.nr_hugepages={need // 2} or "
        f"more for one {hpus_per_worker}-HPU worker, then restart the kubelet), or lower the "
        f"request: gaudi3 operator --hugepages-mi-per-hpu (chart gaudi.hugepagesMiPerHPU) or "
        f"a job's spec.resources"
    )
    if ok == 0:
        return result("hugepages", Status.FAIL, found, fix)
    if short:
        return result("hugepages", Status.WARN, found, fix)
    return result("hugepages", Status.PASS, found)


# --- Pod Security ----------------------------------------------------------------------------
def pod_security_refusals(level: str, host_ipc: bool, capabilities: Iterable[str]) -> list[str]:
    """What a Pod Security level refuses of a worker (hostIPC, added capabilities)."""
    if level == "privileged":
        return []
    allowed = RESTRICTED_CAPABILITIES if level == "restricted" else BASELINE_CAPABILITIES
    refused = ["hostIPC"] if host_ipc else []
    refused += [f"capability {c}" for c in capabilities if c not in allowed]
    return refused


@dataclass(frozen=True)
class DryRun:
    """A server-side dry run of creating a worker pod in the namespace."""

    allowed: bool
    message: str = ""
    # The caller may not create pods (RBAC said no before admission ran): no answer.
    unanswered: bool = False


def check_pod_security(
    namespace: str, ns_obj: Obj | None, dry_run: DryRun | None, labels_known: bool = True
) -> Result:
    """The namespace admits a worker with hostIPC and SYS_NICE (Intel's pod contract,
    docs/gaudi.md "Pod Security"). The dry run is the API server's own answer, whatever
    decides it (Pod Security, a policy engine); the enforce label is the fallback."""
    fix = (
        f"kubectl label namespace {namespace} {PSA_ENFORCE}=privileged --overwrite (as "
        f"Intel's own operator namespace has), or run only jobs with spec.gaudi.hostIPC: "
        f"false and sysNice: false (no HCCL across pods)"
    )
    if ns_obj is None:
        return result(
            "pod-security",
            Status.FAIL,
            f"no namespace {namespace}",
            f"kubectl create namespace {namespace}, then {fix.split(', or')[0]}",
        )
    level = (_get(ns_obj, "metadata", "labels") or {}).get(PSA_ENFORCE, "")
    shown = f"{PSA_ENFORCE}={level}" if level else f"no {PSA_ENFORCE} label"
    if not labels_known:
        shown = "the namespace's labels are not readable to you"
    if dry_run is not None and not dry_run.unanswered:
        if dry_run.allowed:
            return result(
                "pod-security",
                Status.PASS,
                f"{shown}; a worker pod with hostIPC and SYS_NICE is admitted (dry run)",
            )
        return result(
            "pod-security",
            Status.FAIL,
            f"{shown}; the API server refuses a worker pod (dry run): {dry_run.message}",
            fix,
        )
    why = "no dry run: " + (dry_run.message if dry_run else "not tried")
    if not level:
        return result(
            "pod-security",
            Status.WARN,
            f"{shown}: the cluster's default level applies (privileged unless the API "
            f"server's PodSecurity configuration says otherwise); {why}",
            f"{fix}; or run preflight as someone who may create pods there",
        )
    refused = pod_security_refusals(level, True, [SYS_NICE])
    if refused:
        return result(
            "pod-security",
            Status.FAIL,
            f"{shown} refuses {' and '.join(refused)} of HPU workers ({why})",
            fix,
        )
    return result("pod-security", Status.PASS, f"{shown} ({why})")


def dry_run_pod(settings: Settings) -> dict[str, Any]:
    """The worker pod the operator would create for a job in the namespace (Intel's pod
    contract, the default huge pages, the scale-out gate), minus the owner reference (no
    job exists) under a fresh name; only ever sent with dryRun=All."""
    spec = api.GaudiTrainingJobSpec.model_validate(
        {
            "image": DRY_RUN_IMAGE,
            "hpusPerWorker": settings.hpus_per_worker,
            "workers": {"replicas": 2 if settings.multi_node else 1},
        }
    )
    job = manifests.JobRef(f"gaudi3-preflight-{uuid.uuid4().hex[:6]}", settings.namespace, "")
    gaudi = GaudiSettings(settings.hugepages_mi_per_hpu, settings.scale_out_label)
    pod = manifests.worker_pod_manifest(spec, job, 0, 0, settings=gaudi)
    pod["metadata"].pop("ownerReferences", None)
    return pod


# --- access --------------------------------------------------------------------------------
def check_access(answers: Mapping[str, bool], namespace: str, subject: str) -> Result:
    """`subject` may create GaudiTrainingJobs in the namespace (and, as a warning, read and
    delete them): SelfSubjectAccessReview, or SubjectAccessReview for another user."""
    resource = f"{api.PLURAL}.{api.GROUP}"
    denied = [v for v in JOB_VERBS if not answers.get(v)]
    allowed = [v for v in JOB_VERBS if answers.get(v)]
    found = f"{subject} in {namespace}: " + (
        f"may {', '.join(allowed)}" if allowed else "may do nothing"
    )
    if denied:
        found += f"; may not {', '.join(denied)}"
    fix = (
        f"bind a Role granting {', '.join(denied)} on {resource} in {namespace} (kubectl "
        f"create role gtj-author -n {namespace} --verb={','.join(JOB_VERBS)} "
        f"--resource={resource}; kubectl create rolebinding ... --role=gtj-author)"
    )
    if "create" in denied:
        return result("access", Status.FAIL, found, fix)
    if denied:
        return result("access", Status.WARN, found, fix)
    return result("access", Status.PASS, found)


# --- Kueue ---------------------------------------------------------------------------------
def check_kueue(
    queue: str,
    namespace: str,
    served_versions: Sequence[str] | None,
    local_queue: Obj | None,
    cluster_queue: Obj | None,
) -> Result:
    """With a queue named, Kueue's API is served (the version the operator writes) and the
    LocalQueue exists and is active (its ClusterQueue exists and is ready)."""
    if not queue:
        return result("kueue", Status.SKIP, "no queue named (pass --queue NAME to check one)")
    if not served_versions:
        return result(
            "kueue",
            Status.FAIL,
            f"Kueue's API {KUEUE_GROUP} is not served",
            "install Kueue (docs/queueing.md), or run jobs without spec.scheduling.queue",
        )
    if KUEUE_VERSION not in served_versions:
        return result(
            "kueue",
            Status.FAIL,
            f"{KUEUE_GROUP} serves {', '.join(served_versions)}; the operator writes "
            f"{KUEUE_VERSION} Workloads",
            "upgrade Kueue to a release that serves v1beta2 (docs/queueing.md)",
        )
    ref = f"LocalQueue {namespace}/{queue}"
    if local_queue is None:
        return result(
            "kueue",
            Status.FAIL,
            f"Kueue serves {KUEUE_VERSION}; no {ref}",
            "create it, pointing at a ClusterQueue with habana.ai/gaudi quota "
            "(examples/kueue/), or name another queue",
        )
    cq = _get(local_queue, "spec", "clusterQueue") or ""
    active = _condition(local_queue, "Active")
    if cluster_queue is None:
        return result(
            "kueue",
            Status.FAIL,
            f"{ref} points at ClusterQueue {cq!r}, which does not exist",
            "create the ClusterQueue (examples/kueue/) or fix spec.clusterQueue",
        )
    if active is not None and active.get("status") != "True":
        return result(
            "kueue",
            Status.WARN,
            f"{ref} -> ClusterQueue {cq} is not active: "
            f"{active.get('message') or active.get('reason')}",
            f"kubectl describe clusterqueue {cq}",
        )
    return result("kueue", Status.PASS, f"{ref} -> ClusterQueue {cq}")
