"""Kubernetes names of the API: group, kind, label and annotation keys, resource names."""

from __future__ import annotations

GROUP = "gaudi.scalestarter.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "GaudiTrainingJob"
PLURAL = "gauditrainingjobs"
SINGULAR = "gauditrainingjob"
SHORT_NAME = "gtj"
CATEGORY = "gaudi"

LABEL_JOB_NAME = f"{GROUP}/job-name"
LABEL_WORKER_INDEX = f"{GROUP}/worker-index"
# The restart generation: bumped by a RecreateAll restart (failover) or a world resize
# that needs new pods (autoscaling). Pods of an older generation are surplus.
LABEL_GENERATION = f"{GROUP}/generation"
# A warm spare (spec.workers.spares): started outside the world, no worker index until it
# takes a lost worker's place (then this label goes and the index label comes).
LABEL_SPARE = f"{GROUP}/spare"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "gaudi-operator"

# Annotations on worker pods.
ANNOTATION_PROMETHEUS_SCRAPE = "prometheus.io/scrape"
ANNOTATION_PROMETHEUS_PORT = "prometheus.io/port"
ANNOTATION_PROMETHEUS_PATH = "prometheus.io/path"

# Annotation on a job: names the external autoscaler (HPA, KEDA, a script) that drives its
# /scale subresource. An HPA whose scaleTargetRef names the job is found without it.
ANNOTATION_EXTERNAL_AUTOSCALER = f"{GROUP}/external-autoscaler"

# Resource names on Gaudi nodes (the Habana device plugin).
GAUDI_RESOURCE = "habana.ai/gaudi"
GAUDI_TAINT_KEY = "habana.ai/gaudi"
HUGEPAGES_RESOURCE = "hugepages-2Mi"

# Cards per worker pod that Intel supports: a whole node (8), or a module group of 1, 2 or
# 4 ("only 2-Gaudi and 4-Gaudi scenarios are supported" for partial nodes: Intel Gaudi
# docs, Orchestration > Multiple Tenants on HPU > Multiple Workloads on a Single Docker).
SUPPORTED_HPUS_PER_WORKER = (1, 2, 4, 8)
# What the Habana device plugin's Allocate writes into every container that gets cards
# (HabanaAI/habanalabs-k8s-device-plugin, server.go): never set by the operator, and
# refused in a template (the CRD's rule on spec.template's env), because a container that
# set them would see other cards than the ones the kubelet gave it.
DEVICE_PLUGIN_ENV = (
    "HABANA_VISIBLE_DEVICES",
    "HABANA_VISIBLE_MODULES",
    "HL_VISIBLE_DEVICES",
    "HL_VISIBLE_DEVICES_UUID",
)
# The node label Intel's network operator sets (through NFD) once a node's Gaudi scale-out
# NICs are configured (intel/network-operator: README, cmd/discover/main.go).
SCALE_OUT_READY_LABEL = "intel.feature.node.kubernetes.io/gaudi-scale-out=true"

WORKER_CONTAINER = "worker"
RDZV_PORT = 29400
MASTER_PORT = 29500
METRICS_PORT = 9400
# The launcher's control endpoint (failurePolicy.restartInPlace; docs/training.md,
# "Recovery protocol"), on the pod IP; its bearer token is in the job's Secret.
CONTROL_PORT = 29401
CONTROL_TOKEN_KEY = "token"
TORCHRUN_MAX_RESTARTS = 3


def job_selector(job_name: str) -> str:
    """`status.selector`: the label selector of a job's children (for /scale)."""
    return f"{LABEL_JOB_NAME}={job_name}"


def worker_pod_name(job_name: str, index: int) -> str:
    return f"{job_name}-worker-{index}"


def spare_pod_name(job_name: str, number: int) -> str:
    """A warm spare's name: it keeps it after taking a worker's index (pods cannot be
    renamed), so a later spare takes the next free number."""
    return f"{job_name}-spare-{number}"


def control_secret_name(job_name: str) -> str:
    """The job's Secret holding the launchers' control token (owned by the job)."""
    return f"{job_name}-control"
