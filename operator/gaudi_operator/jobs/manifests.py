"""Manifests of a job's children: the headless Service, the worker pods, the PodGroup.

Pure functions of the spec and a few observed facts (uid, generation, excluded nodes).
The user's `spec.template` overlay is merged by `apply_template`; its rules are the ones
the CRD's description of `spec.template` documents.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gaudi_operator import api
from gaudi_operator.api import GaudiTrainingJobSpec
from gaudi_operator.jobs import gaudi
from gaudi_operator.jobs.gaudi import GaudiSettings

# Per-HPU defaults, overridable through spec.resources or the template. Huge pages: see
# `gaudi.HUGEPAGES_MI_PER_HPU` (Intel's sizing; operator-wide in GaudiSettings).
MEMORY_GI_PER_HPU = 16
CPU_PER_HPU = 4
# /dev/shm of a worker without hostIPC (with it, the node's own /dev/shm: docs/gaudi.md).
SHM_GI_PER_HPU = 8
SHM_PATH = "/dev/shm"
TERMINATION_GRACE_SECONDS = 120  # the launcher checkpoints on SIGTERM

SHM_VOLUME = "dshm"
CHECKPOINT_VOLUME = "checkpoints"
POD_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"  # scheduler-plugins coscheduling
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"

# Pod-spec fields the operator owns: the template cannot change them, because the
# rendezvous DNS name and the restart semantics depend on them.
_OPERATOR_POD_FIELDS = frozenset({"hostname", "subdomain", "restartPolicy"})
_APPENDED_POD_LISTS = ("tolerations", "initContainers", "imagePullSecrets", "hostAliases")


@dataclass(frozen=True)
class JobRef:
    """What the manifests need to know about the job object itself."""

    name: str
    namespace: str
    uid: str

    @property
    def service_dns(self) -> str:
        return f"{self.name}.{self.namespace}.svc"

    @property
    def master_addr(self) -> str:
        return f"{api.worker_pod_name(self.name, 0)}.{self.service_dns}"


def owner_reference(job: JobRef) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_labels(job_name: str) -> dict[str, str]:
    return {api.LABEL_JOB_NAME: job_name, api.LABEL_MANAGED_BY: api.MANAGED_BY}


def _metadata(job: JobRef, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(job)],
    }


def needs_service(spec: GaudiTrainingJobSpec) -> bool:
    """The headless Service gives workers each other's names; a job that can never have a
    second worker (workers.max 1) has nobody to find and gets none (one write less): its
    worker 0 reaches itself at its own IP (`worker_env`)."""
    return spec.workers.max > 1


def service_manifest(job: JobRef) -> dict[str, Any]:
    """Headless Service `<job>`: gives each worker `<job>-worker-<i>.<job>.<ns>.svc`."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, job.name, child_labels(job.name)),
        "spec": {
            "clusterIP": "None",
            "selector": {api.LABEL_JOB_NAME: job.name},
            # Workers resolve each other before they are Ready: rendezvous precedes readiness.
            "publishNotReadyAddresses": True,
            "ports": [
                {"name": "rdzv", "port": api.RDZV_PORT, "targetPort": api.RDZV_PORT},
                {"name": "master", "port": api.MASTER_PORT, "targetPort": api.MASTER_PORT},
                {"name": "metrics", "port": api.METRICS_PORT, "targetPort": api.METRICS_PORT},
            ],
        },
    }


def control_secret_manifest(job: JobRef, token: str) -> dict[str, Any]:
    """The job's Secret with the launchers' control token (restartInPlace); owned by the
    job, so it is deleted with it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(job, api.control_secret_name(job.name), child_labels(job.name)),
        "type": "Opaque",
        "stringData": {api.CONTROL_TOKEN_KEY: token},
    }


def worker_env(
    spec: GaudiTrainingJobSpec,
    job: JobRef,
    index: int,
    generation: int,
    in_place_generation: int = 0,
    rendezvous: str | None = None,
) -> list[dict[str, Any]]:
    """The torchrun elastic and launcher environment (docs/architecture.md). `rendezvous`
    ("host:port"): where the world's store is when a former spare holds index 0 (the
    worker-0 name then answers nothing; `jobs.spares.rendezvous`)."""
    w = spec.workers
    env: dict[str, str] = {
        "PET_NNODES": f"{w.min}:{w.max}",
        "PET_NPROC_PER_NODE": str(spec.hpus_per_worker),
        "PET_RDZV_BACKEND": "c10d",
        "PET_RDZV_ENDPOINT": rendezvous or f"{job.master_addr}:{api.RDZV_PORT}",
        "PET_RDZV_ID": f"{job.uid}-{generation}",
        "PET_MAX_RESTARTS": str(api.TORCHRUN_MAX_RESTARTS),
        "MASTER_ADDR": job.master_addr,
        "MASTER_PORT": str(api.MASTER_PORT),
        "GAUDI3_JOB_NAME": job.name,
        "GAUDI3_NAMESPACE": job.namespace,
        "GAUDI3_WORKER_INDEX": str(index),
        "GAUDI3_GENERATION": str(generation),
        # The world this pod is created for: its rendezvous need not wait for the rest of
        # PET_NNODES' maximum (pods kept through a scale-up keep their smaller count).
        "GAUDI3_WORLD_PODS": str(w.replicas),
        "GAUDI3_CHECKPOINT_DIR": spec.checkpoint.path,
        "GAUDI3_CHECKPOINT_INTERVAL": str(spec.checkpoint.interval_steps),
        "GAUDI3_METRICS_PORT": str(api.METRICS_PORT),
    }
    if spec.batch is not None:
        env["GAUDI3_GLOBAL_BATCH_SIZE"] = str(spec.batch.global_batch_size)
        env["GAUDI3_MICRO_BATCH_SIZE"] = str(spec.batch.micro_batch_size)
    out: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in env.items()]
    out.append(
        {"name": "GAUDI3_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    )
    # The launcher's listeners bind this address, never 0.0.0.0: with host networking
    # every pod of a machine shares one port space.
    out.append({"name": "GAUDI3_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    if spec.failure_policy.restart_in_place:
        out += control_env(job, in_place_generation)
    if not needs_service(spec):
        # No Service, so no worker-0 name: the one worker's rendezvous and master address
        # are its own IP, which the name would resolve to. `$(VAR)` is expanded by the
        # kubelet from variables defined before it, so these move after GAUDI3_POD_IP.
        own = {
            "PET_RDZV_ENDPOINT": f"$(GAUDI3_POD_IP):{api.RDZV_PORT}",
            "MASTER_ADDR": "$(GAUDI3_POD_IP)",
        }
        out = [e for e in out if e["name"] not in own]
        out += [{"name": k, "value": v} for k, v in own.items()]
    return out


def control_env(job: JobRef, in_place_generation: int) -> list[dict[str, Any]]:
    """Operator-managed recovery (failurePolicy.restartInPlace): the launcher serves its
    control endpoint on the pod IP, authenticated by the job's token, which the pod spec
    holds only as a reference to the job's Secret (docs/training.md, "Recovery protocol")."""
    secret = {"name": api.control_secret_name(job.name), "key": api.CONTROL_TOKEN_KEY}
    return [
        {"name": "GAUDI3_CONTROL_PORT", "value": str(api.CONTROL_PORT)},
        {"name": "GAUDI3_CONTROL_TOKEN", "valueFrom": {"secretKeyRef": secret}},
        # With host networking the hostname is the node's: the pod's name comes from the API.
        {"name": "GAUDI3_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        # The world this pod's launcher first joins: the one the others are in now.
        {"name": "GAUDI3_IN_PLACE_GENERATION", "value": str(in_place_generation)},
    ]


def worker_resources(
    spec: GaudiTrainingJobSpec, settings: GaudiSettings = gaudi.DEFAULTS
) -> dict[str, dict[str, Any]]:
    """Defaults, then spec.resources; habana.ai/gaudi always equals hpusPerWorker."""
    hpus = spec.hpus_per_worker
    requests: dict[str, Any] = {
        "cpu": str(CPU_PER_HPU * hpus),
        "memory": f"{MEMORY_GI_PER_HPU * hpus}Gi",
    }
    limits: dict[str, Any] = {}
    if settings.hugepages_mi_per_hpu > 0:  # 0: no huge pages (nodes without any)
        pages = f"{settings.hugepages_mi_per_hpu * hpus}Mi"
        requests[api.HUGEPAGES_RESOURCE] = limits[api.HUGEPAGES_RESOURCE] = pages
    requests.update(spec.resources.requests)
    limits.update(spec.resources.limits)
    return _pin_resources({"requests": requests, "limits": limits}, hpus)


def _pin_resources(resources: dict[str, Any], hpus: int) -> dict[str, dict[str, Any]]:
    requests = dict(resources.get("requests") or {})
    limits = dict(resources.get("limits") or {})
    requests[api.GAUDI_RESOURCE] = hpus
    limits[api.GAUDI_RESOURCE] = hpus
    # Extended resources and huge pages must have requests == limits (API validation).
    for key in set(requests) | set(limits):
        if key.startswith("hugepages-"):
            value = limits.get(key, requests.get(key))
            requests[key] = limits[key] = value
    return {"requests": requests, "limits": limits}


# Where Prometheus' annotation-based scrape (and `kubectl gtj`) finds a worker's ranks.
SCRAPE_ANNOTATIONS = {
    api.ANNOTATION_PROMETHEUS_SCRAPE: "true",
    api.ANNOTATION_PROMETHEUS_PORT: str(api.METRICS_PORT),
    api.ANNOTATION_PROMETHEUS_PATH: "/metrics",
}


def worker_pod_manifest(
    spec: GaudiTrainingJobSpec,
    job: JobRef,
    index: int,
    generation: int,
    excluded_nodes: Iterable[str] = (),
    settings: GaudiSettings = gaudi.DEFAULTS,
    in_place_generation: int = 0,
    rendezvous: str | None = None,
) -> dict[str, Any]:
    name = api.worker_pod_name(job.name, index)
    labels = {
        **child_labels(job.name),
        api.LABEL_WORKER_INDEX: str(index),
        api.LABEL_GENERATION: str(generation),
    }
    annotations = dict(SCRAPE_ANNOTATIONS)
    container: dict[str, Any] = {
        "name": api.WORKER_CONTAINER,
        "image": spec.image,
        "env": worker_env(spec, job, index, generation, in_place_generation, rendezvous),
        "resources": worker_resources(spec, settings),
        "ports": [
            {"name": "rdzv", "containerPort": api.RDZV_PORT},
            {"name": "master", "containerPort": api.MASTER_PORT},
            {"name": "metrics", "containerPort": api.METRICS_PORT},
        ],
        "volumeMounts": [{"name": CHECKPOINT_VOLUME, "mountPath": spec.checkpoint.path}],
    }
    if spec.failure_policy.restart_in_place:
        container["ports"].append({"name": "control", "containerPort": api.CONTROL_PORT})
    if spec.command:
        container["command"] = list(spec.command)
    if spec.args:
        container["args"] = list(spec.args)
    if spec.checkpoint.volume_claim_name:
        ckpt_volume: dict[str, Any] = {
            "name": CHECKPOINT_VOLUME,
            "persistentVolumeClaim": {"claimName": spec.checkpoint.volume_claim_name},
        }
    else:
        # No claim: still a writable directory, lost with the pod (fine for smoke runs).
        ckpt_volume = {"name": CHECKPOINT_VOLUME, "emptyDir": {}}
    pod_spec: dict[str, Any] = {
        "hostname": name,
        "subdomain": job.name,
        "restartPolicy": "Never",  # the operator restarts workers; torchrun restarts in-pod
        "enableServiceLinks": False,  # thousands of Services would bloat every worker's env
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "containers": [container],
        "volumes": [ckpt_volume],
        "tolerations": [
            {"key": api.GAUDI_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"},
        ],
    }
    gaudi.apply_host_ipc(pod_spec, spec)
    sched = spec.scheduling
    if sched.scheduler_name:
        pod_spec["schedulerName"] = sched.scheduler_name
    if sched.priority_class_name:
        pod_spec["priorityClassName"] = sched.priority_class_name
    if sched.gang and sched.scheduler_name:
        if is_volcano(spec):
            annotations[VOLCANO_GROUP_ANNOTATION] = job.name
        else:
            labels[POD_GROUP_LABEL] = job.name
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**_metadata(job, name, labels), "annotations": annotations},
        "spec": pod_spec,
    }
    pod = apply_template(pod, spec.template, spec.hpus_per_worker)
    gaudi.add_sys_nice(pod["spec"]["containers"][0], spec)
    _mount_shm(pod, spec.hpus_per_worker)
    label = gaudi.scale_out_gate(spec, settings)
    if label is not None:
        _require_on_every_term(pod, label.requirement())
    return exclude_nodes(pod, sorted(set(excluded_nodes)))


def spare_pod_manifest(
    spec: GaudiTrainingJobSpec,
    job: JobRef,
    number: int,
    generation: int,
    excluded_nodes: Iterable[str] = (),
    settings: GaudiSettings = gaudi.DEFAULTS,
    in_place_generation: int = 0,
    rendezvous: str | None = None,
) -> dict[str, Any]:
    """A warm spare (spec.workers.spares): a worker's pod in every way (template, resources,
    Intel's contract, node exclusions), but outside the world: no worker index, and
    GAUDI3_SPARE=1 makes its launcher import everything and wait for a decision that gives
    it an index (docs/training.md, "Warm spares"). Taking a lost worker's place relabels it
    (`promotion_patch`); its name stays."""
    pod = worker_pod_manifest(
        spec, job, 0, generation, excluded_nodes, settings, in_place_generation, rendezvous
    )
    name = api.spare_pod_name(job.name, number)
    meta = pod["metadata"]
    meta["name"] = name
    labels = meta["labels"]
    del labels[api.LABEL_WORKER_INDEX]
    labels[api.LABEL_SPARE] = "true"
    pod["spec"]["hostname"] = name
    # No ranks, no metrics yet: not a scrape target (Prometheus, `kubectl gtj`) until it
    # takes an index (`promotion_patch` adds the annotations).
    for key in SCRAPE_ANNOTATIONS:
        meta["annotations"].pop(key, None)
    worker = pod["spec"]["containers"][0]
    env = [e for e in worker["env"] if e["name"] != "GAUDI3_WORKER_INDEX"]
    worker["env"] = [{"name": "GAUDI3_SPARE", "value": "1"}, *env]
    return pod


def promotion_patch(index: int, generation: int) -> dict[str, Any]:
    """The merge patch that makes a spare worker `index` of the world of `generation`: one
    write, and the pod watch shows it (level-based: the labels are the record)."""
    return {
        "metadata": {
            "labels": {
                api.LABEL_SPARE: None,
                api.LABEL_WORKER_INDEX: str(index),
                api.LABEL_GENERATION: str(generation),
            },
            "annotations": dict(SCRAPE_ANNOTATIONS),
        }
    }


def _mount_shm(pod: dict[str, Any], hpus: int) -> None:
    """/dev/shm of the worker, decided after the template (which may set hostIPC).

    With hostIPC the runtime gives the container the node's own /dev/shm (containerd's CRI
    does so for a pod in the node's IPC namespace unless a volume is mounted there), as
    Docker's `--ipc=host` in Intel's examples: POSIX shared memory and System V IPC then
    live in one namespace, the host's. A private memory volume there would split them.
    Without hostIPC the runtime's /dev/shm is 64 MiB, too small for data loaders: a
    memory-backed emptyDir instead. A `dshm` volume of the template is always mounted.
    """
    spec = pod["spec"]
    worker = spec["containers"][0]
    mounts = worker.setdefault("volumeMounts", [])
    if any(m.get("mountPath") == SHM_PATH for m in mounts):
        return  # the template mounts its own
    user_shm = any(v.get("name") == SHM_VOLUME for v in spec["volumes"])
    if spec.get("hostIPC") and not user_shm:
        return
    if not user_shm:
        spec["volumes"].insert(
            0,
            {
                "name": SHM_VOLUME,
                "emptyDir": {"medium": "Memory", "sizeLimit": f"{SHM_GI_PER_HPU * hpus}Gi"},
            },
        )
    mounts.insert(0, {"name": SHM_VOLUME, "mountPath": SHM_PATH})


def apply_template(pod: dict[str, Any], template: dict[str, Any], hpus: int) -> dict[str, Any]:
    """Merge the user's pod-template overlay into an operator-built worker pod.

    - metadata.labels/annotations and spec.nodeSelector: merged, the operator's keys win;
    - spec.tolerations, initContainers, imagePullSecrets, hostAliases: appended;
    - spec.volumes: appended; a volume named like one of the operator's (`dshm`,
      `checkpoints`) replaces it;
    - spec.containers: the one named "worker" (or unnamed) merges into the worker
      container (env and volumeMounts appended, the operator's env names win; resources
      merged, habana.ai/gaudi pinned to hpusPerWorker; ports appended; any other field
      set, except image, which is spec.image). Other containers are appended (sidecars);
    - hostname, subdomain, restartPolicy: the operator's; any other field: the user's.
    """
    if not template:
        return pod
    pod = copy.deepcopy(pod)
    meta, spec = pod["metadata"], pod["spec"]
    t_meta = template.get("metadata") or {}
    for key in ("labels", "annotations"):
        meta[key] = {**(t_meta.get(key) or {}), **(meta.get(key) or {})}
    t_spec = copy.deepcopy(template.get("spec") or {})
    for key, value in t_spec.items():
        if key in _OPERATOR_POD_FIELDS or key in ("containers", "volumes"):
            continue
        if key == "nodeSelector":
            spec[key] = {**(value or {}), **(spec.get(key) or {})}
        elif key in _APPENDED_POD_LISTS:
            spec[key] = [*(spec.get(key) or []), *(value or [])]
        else:
            spec[key] = value
    user_volumes = t_spec.get("volumes") or []
    replaced = {v.get("name") for v in user_volumes}
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in replaced] + user_volumes
    worker = spec["containers"][0]
    for c in t_spec.get("containers") or []:
        if c.get("name") in (None, "", api.WORKER_CONTAINER):
            _merge_worker_container(worker, c, hpus)
        else:
            spec["containers"].append(c)
    return pod


def _merge_worker_container(worker: dict[str, Any], user: dict[str, Any], hpus: int) -> None:
    ours = {e["name"] for e in worker["env"]}
    worker["env"] += [e for e in user.get("env") or [] if e.get("name") not in ours]
    mounts = {m["name"] for m in user.get("volumeMounts") or []}
    worker["volumeMounts"] = [m for m in worker["volumeMounts"] if m["name"] not in mounts] + list(
        user.get("volumeMounts") or []
    )
    ports = {p.get("containerPort") for p in worker["ports"]}
    worker["ports"] += [p for p in user.get("ports") or [] if p.get("containerPort") not in ports]
    res = user.get("resources") or {}
    merged = {
        k: {**worker["resources"].get(k, {}), **(res.get(k) or {})} for k in ("requests", "limits")
    }
    worker["resources"] = _pin_resources(merged, hpus)
    for key, value in user.items():
        if key not in ("name", "image", "env", "volumeMounts", "ports", "resources"):
            worker[key] = value


def exclude_nodes(pod: dict[str, Any], nodes: list[str]) -> dict[str, Any]:
    """Keep the pod off `nodes` (nodes that failed this job), whatever affinity it has."""
    if not nodes:
        return pod
    pod = copy.deepcopy(pod)
    _require_on_every_term(
        pod, {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": nodes}
    )
    return pod


def _require_on_every_term(pod: dict[str, Any], expr: dict[str, Any]) -> None:
    """Add a required node-selector expression, whatever affinity the pod has."""
    affinity = pod["spec"].setdefault("affinity", {})
    node_aff = affinity.setdefault("nodeAffinity", {})
    required = node_aff.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({})
    # Terms are ORed: the expression must be in every one of them.
    for term in terms:
        term.setdefault("matchExpressions", []).append(copy.deepcopy(expr))


def is_volcano(spec: GaudiTrainingJobSpec) -> bool:
    return spec.scheduling.scheduler_name == "volcano"


def pod_group_manifest(spec: GaudiTrainingJobSpec, job: JobRef) -> dict[str, Any] | None:
    """A PodGroup so the workers are placed all together, or None when gang is off.

    minMember is workers.min: torchrun elastic can start with the lower bound.
    """
    sched = spec.scheduling
    if not (sched.gang and sched.scheduler_name):
        return None
    min_member = spec.workers.min
    if is_volcano(spec):
        body: dict[str, Any] = {
            "apiVersion": "scheduling.volcano.sh/v1beta1",
            "kind": "PodGroup",
            "metadata": _metadata(job, job.name, child_labels(job.name)),
            "spec": {"minMember": min_member},
        }
        if sched.queue:
            body["spec"]["queue"] = sched.queue
        if sched.priority_class_name:
            body["spec"]["priorityClassName"] = sched.priority_class_name
        return body
    return {
        "apiVersion": "scheduling.x-k8s.io/v1alpha1",
        "kind": "PodGroup",
        "metadata": _metadata(job, job.name, child_labels(job.name)),
        "spec": {"minMember": min_member, "scheduleTimeoutSeconds": 600},
    }
