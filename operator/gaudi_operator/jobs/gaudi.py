"""Intel's pod contract for HPU workers and the scale-out readiness gate (docs/gaudi.md).

Pure: `worker_pod_manifest` applies what this module decides. Each rule cites the Intel
document or source it follows; docs/gaudi.md has the full text and what tests cover.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gaudi_operator import api
from gaudi_operator.api import GaudiTrainingJobSpec

# hugepages-2Mi per HPU, in MiB. Intel's installation guide reserves 15000 2 MiB pages
# (30000 MiB) on an 8-card server ("Set number of huge pages", HabanaAI/Setup_and_Install
# README, 1.2.0), and Intel's own 8-card Kubernetes pods request 29000Mi of it
# (Setup_and_Install utils/intel_gaudi_health_screen/template/k8s/*.yaml): 29000 / 8 is
# 3625, rounded down to whole 2 MiB pages (the API refuses any other amount).
HUGEPAGES_MI_PER_HPU = 3624
# The capability Intel's examples add to every HPU container ("Running a Job on the
# Cluster", "Running Workloads on Kubernetes"; `--cap-add=sys_nice` in "Pull Prebuilt
# Containers"): the runtime raises its threads' scheduling priority.
SYS_NICE = "SYS_NICE"

# Reasons of the Scheduled condition (jobs.plan) that this gate adds.
NO_SCALE_OUT_READY_NODE = "NoScaleOutReadyNode"


@dataclass(frozen=True)
class NodeLabel:
    """A node label requirement, `key=value` or just `key` (any value)."""

    key: str
    value: str | None = None

    @classmethod
    def parse(cls, text: str) -> NodeLabel | None:
        """`key=value` or `key`; empty (or blank) is None, i.e. no requirement."""
        text = text.strip()
        if not text:
            return None
        key, sep, value = text.partition("=")
        key = key.strip()
        if not key:
            raise ValueError(f"{text!r}: a node label needs a key (key or key=value)")
        return cls(key, value.strip() if sep else None)

    @property
    def text(self) -> str:
        return self.key if self.value is None else f"{self.key}={self.value}"

    def on(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        if self.key not in labels:
            return False
        return self.value is None or labels[self.key] == self.value

    def requirement(self) -> dict[str, Any]:
        """The node selector requirement of this label."""
        if self.value is None:
            return {"key": self.key, "operator": "Exists"}
        return {"key": self.key, "operator": "In", "values": [self.value]}


DEFAULT_SCALE_OUT_LABEL = NodeLabel.parse(api.SCALE_OUT_READY_LABEL)


@dataclass(frozen=True)
class GaudiSettings:
    """The operator-wide side of the contract (`gaudi3 operator` flags, chart values)."""

    hugepages_mi_per_hpu: int = HUGEPAGES_MI_PER_HPU
    # None: the scale-out gate is off for every job.
    scale_out_label: NodeLabel | None = DEFAULT_SCALE_OUT_LABEL


DEFAULTS = GaudiSettings()


def needs_scale_out(spec: GaudiTrainingJobSpec) -> bool:
    """Only a job that can have more than one worker talks across nodes through the Gaudi
    scale-out NICs; a job can opt out (`spec.gaudi.requireScaleOutReady: false`, e.g. one
    that scales out over host NICs, or whose workers all fit on one node)."""
    return spec.gaudi.require_scale_out_ready and spec.workers.max > 1


def scale_out_gate(spec: GaudiTrainingJobSpec, settings: GaudiSettings) -> NodeLabel | None:
    """The label this job's workers must find on their node, or None (no gate)."""
    label = settings.scale_out_label
    return label if label is not None and needs_scale_out(spec) else None


@dataclass(frozen=True)
class ScaleOut:
    """What a pass knows of the gate: its label and how many nodes carry it now."""

    label: NodeLabel
    ready_nodes: int


class ScaleOutNodes:
    """The nodes that carry the scale-out readiness label, kept from the node watch."""

    def __init__(self, label: NodeLabel | None) -> None:
        self.label = label
        self._ready: set[str] = set()
        self._seen = False  # before the first node event the count means nothing

    def update(self, event_type: str | None, name: str, labels: Mapping[str, str] | None) -> bool:
        """Apply a node event; True when the cluster went from no ready node to some, or
        back (jobs waiting for one are worth a look then)."""
        if self.label is None or not name:
            return False
        before = bool(self._ready)
        if event_type != "DELETED" and self.label.on(labels):
            self._ready.add(name)
        else:
            self._ready.discard(name)
        first, self._seen = not self._seen, True
        return first or before != bool(self._ready)

    @property
    def ready(self) -> int:
        return len(self._ready)

    def view(self) -> ScaleOut | None:
        if self.label is None or not self._seen:
            return None
        return ScaleOut(self.label, len(self._ready))


def apply_host_ipc(pod_spec: dict[str, Any], spec: GaudiTrainingJobSpec) -> None:
    """hostIPC: true, as every Kubernetes example of Intel's sets it (before the template,
    which may set any pod field, hostIPC included)."""
    if spec.gaudi.host_ipc:
        pod_spec["hostIPC"] = True


def add_sys_nice(container: dict[str, Any], spec: GaudiTrainingJobSpec) -> None:
    """The SYS_NICE capability, added to whatever securityContext the template gave the
    worker container (after the template, so that one setting runAsUser keeps it)."""
    if not spec.gaudi.sys_nice:
        return
    ctx = container.get("securityContext") or {}
    caps = ctx.get("capabilities") or {}
    add = list(caps.get("add") or [])
    if SYS_NICE not in add:
        add.append(SYS_NICE)
    container["securityContext"] = {**ctx, "capabilities": {**caps, "add": add}}


def scale_out_message(label: NodeLabel) -> str:
    """Why a multi-worker job waits, and what to do about it (the Scheduled condition)."""
    return (
        f"no node carries the scale-out readiness label {label.text}, which Intel's network "
        f"operator sets once a node's Gaudi scale-out NICs are configured; workers of a job "
        f"that can have more than one worker run only on such nodes. Configure the nodes' "
        f"scale-out network (Intel network operator) or label the ready ones, set "
        f"spec.gaudi.requireScaleOutReady: false for a job that does not use the Gaudi NICs "
        f"across nodes, or turn the gate off for all jobs (gaudi3 operator "
        f"--scale-out-label='', chart value gaudi.scaleOut.requireReadyNodes: false)"
    )
