"""Writes counted by the API server itself: kube-apiserver's `apiserver_request_total`
(by verb, group, resource, subresource), read from its /metrics before and after a run.

The counter has no client label, so writes are told apart by what they write. A job
controller's writes are the children it creates (pods, Services, PodGroups), its job
kind's status subresource, and core/v1 Events; the rest is someone else's: the load
generator's own job creates, the scheduler's bindings (pods/binding) and events
(events.k8s.io), the kubelet's or kwok's pod status (pods/status), leases. Nothing else
may run on the cluster meanwhile for the figures to be one controller's (the benchmarks
and the tests that use this run on their own cluster, or in a quiet one).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from gaudi_devtools import kube_async as kube

WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})
# (verb, group, resource, subresource)
Request = tuple[str, str, str, str]

_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def request_totals(metrics_text: str) -> Counter[Request]:
    """apiserver_request_total summed over code, scope, version and component."""
    out: Counter[Request] = Counter()
    for line in metrics_text.splitlines():
        m = _SAMPLE.match(line)
        if m is None:
            continue
        labels = dict(_LABEL.findall(m.group("labels")))
        if labels.get("scope") in ("namespace", "cluster") and labels.get("verb") == "DELETE":
            continue  # a collection delete (a namespace's teardown): no controller's here
        key = (
            labels.get("verb", ""),
            labels.get("group", ""),
            labels.get("resource", ""),
            labels.get("subresource", ""),
        )
        out[key] += int(float(m.group("value")))
    return out


@dataclass(frozen=True)
class ControllerWrites:
    """One job controller's writes over a run, by kind."""

    pods: int = 0
    services: int = 0
    status: int = 0  # writes of the job kind's status subresource
    events: int = 0  # core/v1 Events, created or patched
    other: int = 0  # PodGroups, pod deletes, the job object itself (spec, metadata)

    @property
    def total(self) -> int:
        return self.pods + self.services + self.status + self.events + self.other

    def per(self, jobs: int) -> dict[str, float]:
        n = max(1, jobs)
        return {
            "total": self.total / n,
            "pods": self.pods / n,
            "services": self.services / n,
            "status": self.status / n,
            "events": self.events / n,
            "other": self.other / n,
        }


def controller_writes(
    before: Mapping[Request, int], after: Mapping[Request, int], job_group: str, job_plural: str
) -> ControllerWrites:
    """The writes a controller of `job_plural` made between the two readings (its load
    generator's job creates left out)."""
    counts: Counter[str] = Counter()
    for key, value in after.items():
        verb, group, resource, sub = key
        n = value - before.get(key, 0)
        if n <= 0 or verb not in WRITE_VERBS:
            continue
        if group == "" and resource == "pods" and sub == "":
            counts["pods" if verb == "POST" else "other"] += n
        elif group == "" and resource == "services" and sub == "" and verb == "POST":
            counts["services"] += n
        elif group == "" and resource == "events" and sub == "":
            counts["events"] += n
        elif group == job_group and resource == job_plural and sub == "status":
            counts["status"] += n
        elif group == job_group and resource == job_plural and sub == "" and verb == "POST":
            continue  # the load generator's creates
        elif group == job_group and resource == job_plural:
            counts["other"] += n  # the job itself: spec, metadata, scale
        elif resource == "podgroups":
            counts["other"] += n
    return ControllerWrites(**counts)


def all_writes(before: Mapping[Request, int], after: Mapping[Request, int]) -> Counter[str]:
    """Every write the API server took between the two readings, whoever sent it, by
    `resource[/subresource]`: the load generator's, the controllers', the scheduler's and
    kwok's. The time a run takes follows this total (one API server, two cores)."""
    out: Counter[str] = Counter()
    for key, value in after.items():
        verb, _group, resource, sub = key
        n = value - before.get(key, 0)
        if n > 0 and verb in WRITE_VERBS:
            out[f"{resource}/{sub}" if sub else resource] += n
    return out


def all_reads(before: Mapping[Request, int], after: Mapping[Request, int]) -> Counter[str]:
    """Every read request (GET, LIST, WATCH) between the two readings, by `VERB resource`.
    A watch counts once when it opens, whatever it streams."""
    out: Counter[str] = Counter()
    for key, value in after.items():
        verb, _group, resource, sub = key
        n = value - before.get(key, 0)
        if n > 0 and verb not in WRITE_VERBS:
            out[f"{verb} {resource}/{sub}" if sub else f"{verb} {resource}"] += n
    return out


async def read_request_totals(clients: kube.Clients) -> Counter[Request]:
    """GET kube-apiserver's /metrics (an admin's kubeconfig may) and count its requests."""
    resp = await clients.api_client.call_api(
        "/metrics",
        "GET",
        header_params={"Accept": "text/plain"},
        auth_settings=["BearerToken"],
        _preload_content=False,
    )
    try:
        text = (await resp.read()).decode()
    finally:
        resp.release()
    return request_totals(text)


def event_writes(events_json: str) -> dict[str, int]:
    """Writes behind the Events of `kubectl get events -o json`, by source component: each
    Event is one create and `count - 1` patches (the recorder's de-duplication). The request
    counter cannot tell whose an Event write was; the Event itself can."""
    out: dict[str, int] = {}
    for e in json.loads(events_json).get("items") or []:
        who = (e.get("source") or {}).get("component") or e.get("reportingComponent") or ""
        out[who] = out.get(who, 0) + max(1, int(e.get("count") or 1))
    return out
