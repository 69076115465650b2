"""The API's names the plugin reads (the operator's `gaudi_operator.api.names`, copied so
the plugin does not import the operator; a unit test keeps the two equal)."""

from __future__ import annotations

GROUP = "gaudi.scalestarter.dev"
VERSION = "v1alpha1"
PLURAL = "gauditrainingjobs"
KIND = "GaudiTrainingJob"
LABEL_JOB_NAME = f"{GROUP}/job-name"
LABEL_WORKER_INDEX = f"{GROUP}/worker-index"
LABEL_GENERATION = f"{GROUP}/generation"
ANNOTATION_PROMETHEUS_SCRAPE = "prometheus.io/scrape"
ANNOTATION_PROMETHEUS_PORT = "prometheus.io/port"
ANNOTATION_PROMETHEUS_PATH = "prometheus.io/path"
GAUDI_RESOURCE = "habana.ai/gaudi"
METRICS_PORT = 9400
