"""Kueue on the local cluster: its manager (built from the Go module by
``hack/toolchain.sh``) as one more process of the cluster, its CRDs, and its webhooks.

The cluster has no kube-proxy and listens on loopback only, so a webhook Service's
ClusterIP would lead nowhere. Instead the manager serves its webhooks on 127.0.0.1 with a
certificate from the cluster's CA, and the webhook configurations, rendered from Kueue's
own manifests, call ``https://127.0.0.1:<port><path>`` (Kueue's internal cert management
is off). Only the webhooks of Kueue's own API (``kueue.x-k8s.io``) are registered: the
Configuration enables no job integration that needs one, so nothing else in the cluster
depends on this process being up.

State lives in the cluster folder: ``kueue/config.yaml``, ``kueue/certs/``,
``kueue/kueue.json`` (ports), ``logs/kueue.log``; ``gaudi3 cluster down`` stops it with the
rest of the cluster's processes.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import httpx
import yaml

from gaudi_devtools.cluster.cluster import Cluster, ClusterError
from gaudi_devtools.cluster.pki import issue_serving_cert
from gaudi_devtools.cluster.processes import free_port

PROCESS = "kueue"
KUEUE_GROUP = "kueue.x-k8s.io"
# The jobs Kueue may own through an external controller (our operator): Kueue then treats
# a GaudiTrainingJob as the owner of its Workload and of any pod it owns.
EXTERNAL_FRAMEWORKS = ("GaudiTrainingJob.v1alpha1.gaudi.scalestarter.dev",)
METRICS_CERTS = Path("/etc/kueue/metrics/certs")
WEBHOOK_NAMES = {
    "MutatingWebhookConfiguration": "kueue-mutating-webhook-configuration",
    "ValidatingWebhookConfiguration": "kueue-validating-webhook-configuration",
}


def install_dir() -> Path:
    """The toolchain's Kueue folder: the binary and the config/ of its module version."""
    exe = Path(Cluster.tool("kueue")).resolve()
    if not (exe.parent / "config" / "webhook" / "manifests.yaml").exists():
        raise ClusterError(
            f"{exe.parent} has no config/ (CRDs, webhooks): run `bash hack/toolchain.sh kueue`"
        )
    return exe.parent


def configuration(webhook_port: int, health_port: int, cert_dir: Path) -> dict[str, Any]:
    """Kueue's Configuration: every listener on loopback, no leader election, no internal
    certs, no visibility API server; integrations kept to Kueue's default (batch/job,
    which it always enables) plus GaudiTrainingJob as an external framework."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": "kueue-system",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {
            "frameworks": ["batch/job"],
            "externalFrameworks": list(EXTERNAL_FRAMEWORKS),
        },
        "featureGates": {"VisibilityOnDemand": False},
    }


def webhook_configurations(
    manifests: list[dict[str, Any]], webhook_port: int, ca_bundle: bytes
) -> list[dict[str, Any]]:
    """Kueue's webhook manifests with URLs instead of Services, only for its own API."""
    out = []
    for doc in manifests:
        kind = doc.get("kind")
        if kind not in WEBHOOK_NAMES:
            continue
        doc = copy.deepcopy(doc)
        doc["metadata"] = {"name": WEBHOOK_NAMES[kind]}
        hooks = []
        for hook in doc.get("webhooks") or []:
            groups = {g for r in hook.get("rules") or [] for g in r.get("apiGroups") or []}
            if groups != {KUEUE_GROUP}:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {
                "url": f"https://127.0.0.1:{webhook_port}{path}",
                "caBundle": base64.b64encode(ca_bundle).decode(),
            }
            hook["timeoutSeconds"] = 10
            hooks.append(hook)
        doc["webhooks"] = hooks
        out.append(doc)
    return out


def _dir(cluster: Cluster) -> Path:
    return cluster.dir / "kueue"


def ports(cluster: Cluster) -> dict[str, int]:
    try:
        return dict(json.loads((_dir(cluster) / "kueue.json").read_text()))
    except (OSError, ValueError):
        return {}


def running(cluster: Cluster) -> bool:
    return cluster.procs.pid(PROCESS) is not None


def ready(cluster: Cluster) -> bool:
    p = ports(cluster)
    if not running(cluster) or "health" not in p:
        return False
    try:
        url = f"http://127.0.0.1:{p['health']}/readyz"
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _metrics_cert(cluster: Cluster) -> None:
    """With internal cert management off, Kueue v0.17 reads a metrics serving cert from a
    fixed path and exits without one, even with its metrics server disabled (as here).
    Any valid pair will do; one is written there once."""
    if (METRICS_CERTS / "tls.crt").exists() and (METRICS_CERTS / "tls.key").exists():
        return
    try:
        issue_serving_cert(cluster.pki, METRICS_CERTS, "kueue-metrics")
    except PermissionError as err:
        raise ClusterError(
            f"Kueue needs a certificate in {METRICS_CERTS} (a path fixed in Kueue); create "
            f"that folder writable for you (e.g. `sudo install -d -o $USER {METRICS_CERTS}`) "
            f"and run again"
        ) from err


def start(cluster: Cluster) -> None:
    """Install Kueue's CRDs, start its manager and register its webhooks; a no-op when it
    already runs."""
    if cluster.settings is None or not cluster.healthy():
        raise ClusterError(f"cluster {cluster.name!r} is not up: run `gaudi3 cluster up`")
    if ready(cluster):
        return
    root = install_dir()
    cluster.procs.stop(PROCESS)  # a half-started one
    cluster.say("installing Kueue's CRDs")
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(root / "config/crd"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "-f", str(root / "config/crd")
    )
    if cluster.kubectl("get", "namespace", "kueue-system", check=False).returncode != 0:
        cluster.kubectl("create", "namespace", "kueue-system")

    here = _dir(cluster)
    here.mkdir(parents=True, exist_ok=True)
    certs = here / "certs"
    issue_serving_cert(cluster.pki, certs, "kueue-webhook")
    _metrics_cert(cluster)
    p = {"webhook": free_port(), "health": free_port()}
    (here / "kueue.json").write_text(json.dumps(p))
    config = here / "config.yaml"
    config.write_text(yaml.safe_dump(configuration(p["webhook"], p["health"], certs)))

    cluster.say("starting Kueue")
    cluster.procs.start(
        PROCESS,
        [str(root / "kueue"), f"--config={config}", f"--kubeconfig={cluster.kubeconfig}"],
    )
    cluster._wait("Kueue /readyz", lambda: ready(cluster), 90, PROCESS)

    manifests = [
        d for d in yaml.safe_load_all((root / "config/webhook/manifests.yaml").read_text()) if d
    ]
    hooks = webhook_configurations(manifests, p["webhook"], (cluster.pki / "ca.crt").read_bytes())
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump_all(hooks)
    )
    # The API server reaches the webhooks: a dry-run create goes through both of them.
    probe = {
        "apiVersion": f"{KUEUE_GROUP}/v1beta2",
        "kind": "ResourceFlavor",
        "metadata": {"name": "gaudi3-webhook-probe"},
    }
    cluster._wait(
        "the API server to call Kueue's webhooks",
        lambda: (
            cluster.kubectl(
                "create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False
            ).returncode
            == 0
        ),
        60,
        PROCESS,
    )


def stop(cluster: Cluster) -> None:
    """Unregister the webhooks (so Kueue's API does not refuse writes for want of them),
    then stop the manager."""
    if cluster.healthy():
        for kind, name in WEBHOOK_NAMES.items():
            cluster.kubectl("delete", kind.lower(), name, "--ignore-not-found", check=False)
    cluster.procs.stop(PROCESS)
