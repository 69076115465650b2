"""Images from a registry, the way a real cluster gets them: `make push` copies both images
(skopeo, no Docker) into the local cluster's registry (CNCF distribution on 127.0.0.1,
`gaudi3 cluster up --registry`), `make chart-push` the chart as an OCI artifact; then the
real nodes' kubelets pull with `imagePullPolicy: Always`: the CPU training image runs
`gaudi3-train --help`, and `helm install oci://…` runs the operator, both replicas Ready and
one holding the Lease.

A pull is proven three ways: the kubelet's `Pulled` event, the container's image ID (the
digest the registry serves for the pushed tag), and the registry's access log, where the
node's containerd asked for that image's manifest.

Both images are pushed once per session (this module's fixture, on the package's cluster):
about 15 s for the operator image and 75 s for the 1.2 GB training image with the machine
under load (skopeo compresses every layer on the way; docs/local-cluster.md has the
figures). The nodes start with both images unpacked (conftest.py), so a pull fetches the
manifest, config and any blob containerd does not hold, and unpacks nothing: seconds.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.realnodes.conftest import ROOT, host_pod
from conftest import wait_for

RELEASE = "reg"
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    )
)


@dataclass
class Pushed:
    address: str  # 127.0.0.1:PORT
    tag: str  # the chart's appVersion: what its image defaults to
    chart_version: str
    log: Path  # the registry's log (its access log included)


def _chart_field(name: str) -> str:
    text = (ROOT / "charts" / "gaudi-operator" / "Chart.yaml").read_text()
    m = re.search(rf'^{name}: *"?([^"\n]+)"?', text, re.M)
    assert m, f"no {name} in Chart.yaml"
    return m.group(1)


def _make(*args: str) -> float:
    """Run a make target of the repository; its wall time."""
    start = time.monotonic()
    out = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, (
        f"make {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    )
    return time.monotonic() - start


@pytest.fixture(scope="module")
def pushed(real: Any, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    address = real.registry_address
    images = _make("push", f"REGISTRY={address}")
    chart = _make("chart-push", f"REGISTRY={address}", f"DIST={tmp_path_factory.mktemp('dist')}")
    print(f"[registry] make push (both images): {images:.1f}s, make chart-push: {chart:.1f}s")
    return Pushed(
        address,
        _chart_field("appVersion"),
        _chart_field("version"),
        real.dir / "logs" / "registry.log",
    )


def _digest(p: Pushed, name: str) -> str:
    r = httpx.head(
        f"http://{p.address}/v2/{name}/manifests/{p.tag}",
        headers={"Accept": MANIFEST_TYPES},
        timeout=10,
    )
    assert r.status_code == 200, f"{name}:{p.tag} is not in the registry ({r.status_code})"
    return r.headers["Docker-Content-Digest"]


def _containerd_requests(p: Pushed, since: int, name: str) -> list[str]:
    """Access-log lines (written after byte `since`) where a containerd asked the registry
    for `name`'s manifest, by tag or digest."""
    with p.log.open("rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    return [
        line
        for line in text.splitlines()
        if f" /v2/{name}/manifests/" in line and '"containerd/' in line and '" 200 ' in line
    ]


def _pulled_event(real: Any, ns: str, pod: str, image: str) -> str:
    out = real.kubectl(
        "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={pod}", "-o", "json"
    )
    messages = [e["message"] for e in json.loads(out.stdout)["items"] if e["reason"] == "Pulled"]
    return next((m for m in messages if m.startswith(f'Successfully pulled image "{image}"')), "")


def test_a_real_node_pulls_the_training_image_from_the_registry_and_runs_it(
    real: Any, pushed: Pushed, ns: str
) -> None:
    image = f"{pushed.address}/gaudi-train-cpu:{pushed.tag}"
    digest = _digest(pushed, "gaudi-train-cpu")
    since = pushed.log.stat().st_size
    pod = host_pod("train-help", "gaudi3-real-0", "")
    pod["spec"]["containers"][0].update(
        image=image, imagePullPolicy="Always", command=["gaudi3-train", "--help"]
    )
    start = time.monotonic()
    real.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))

    def finished() -> dict[str, Any] | None:
        got = json.loads(real.kubectl("get", "pod", "train-help", "-n", ns, "-o", "json").stdout)
        return got if got["status"].get("phase") in ("Succeeded", "Failed") else None

    done: Any = wait_for(finished, timeout=180, interval=0.5, what="the training pod to finish")
    print(f"[registry] training pod created → finished: {time.monotonic() - start:.1f}s")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert "usage: gaudi3-train" in real.kubectl("logs", "train-help", "-n", ns).stdout
    # The kubelet pulled, the container runs the pushed manifest, and the node's containerd
    # fetched it from the registry.
    assert _pulled_event(real, ns, "train-help", image), "no Pulled event for the image"
    status = done["status"]["containerStatuses"][0]
    assert status["imageID"] == f"{pushed.address}/gaudi-train-cpu@{digest}"
    assert _containerd_requests(pushed, since, "gaudi-train-cpu")

    # The preloaded name of the same image still runs with imagePullPolicy Never (what the
    # training tests use): the kubelet now counts that image ID as one it pulled, and
    # without the nodes' allowlist for gaudi3.local/* (realnodes.py) it would refuse it.
    local = host_pod("train-local", "gaudi3-real-0", "")
    local["spec"]["containers"][0].update(
        image="gaudi3.local/gaudi-train-cpu:dev", command=["gaudi3-train", "--help"]
    )
    real.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(local))

    def local_phase() -> str:
        out = real.kubectl("get", "pod", "train-local", "-n", ns, "-o", "jsonpath={.status.phase}")
        return out.stdout

    # ErrImageNeverPull would leave it Pending.
    wait_for(lambda: local_phase() == "Succeeded", timeout=60, what="the preloaded image to run")


@pytest.fixture(scope="module")
def oci_release(real: Any, pushed: Pushed) -> Iterator[tuple[str, int]]:
    """The operator installed with `helm install oci://…/charts/gaudi-operator` from the
    registry, its image pulled from there too; both replicas Ready. Yields the namespace
    and where the registry's log stood before the install."""
    from gaudi_devtools import operator_pods
    from gaudi_devtools.crd import install_crds

    install_crds(real)
    ns = f"reg-{uuid.uuid4().hex[:6]}"
    values = operator_pods.values(
        real,
        # The chart's own tag default (its appVersion), which `make push` pushed.
        image={"repository": f"{pushed.address}/gaudi-operator", "pullPolicy": "Always"},
        watchNamespaces=[ns],
        crds={"enabled": False},  # the package's tests apply the CRD themselves
    )
    chart = f"oci://{pushed.address}/charts/gaudi-operator"
    since = pushed.log.stat().st_size
    start = time.monotonic()
    operator_pods.install(
        real, RELEASE, ns, values, chart, "--version", pushed.chart_version, "--plain-http"
    )
    try:
        wait_for(
            lambda: (
                len([p for p in operator_pods.pods(real, RELEASE, ns) if operator_pods.ready(p)])
                == 2
            ),
            timeout=120,
            interval=0.5,
            what="both operator replicas Ready",
        )
        print(
            f"[registry] helm install oci:// → both replicas Ready: {time.monotonic() - start:.1f}s"
        )
        yield ns, since
    finally:
        # Waited for: the next module's release binds the same host ports on these nodes.
        operator_pods.uninstall(real, RELEASE, ns, wait=True)
        real.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_helm_installs_the_operator_from_the_registry_and_its_pods_pull_its_image(
    real: Any, pushed: Pushed, oci_release: tuple[str, int]
) -> None:
    from gaudi_devtools import operator_pods

    ns, since = oci_release
    digest = _digest(pushed, "gaudi-operator")
    image = f"{pushed.address}/gaudi-operator:{pushed.tag}"
    pods = operator_pods.pods(real, RELEASE, ns)
    placed = [p["spec"]["nodeName"] for p in pods]
    assert len(set(placed)) == 2 and all(n.startswith("gaudi3-real-") for n in placed), placed
    for pod in pods:
        container = pod["spec"]["containers"][0]
        assert (container["image"], container["imagePullPolicy"]) == (image, "Always")
        assert pod["status"]["containerStatuses"][0]["imageID"] == (
            f"{pushed.address}/gaudi-operator@{digest}"
        )
        assert _pulled_event(real, ns, pod["metadata"]["name"], image)
    # The nodes' containerd asked the registry for the image (the log does not tell the two
    # nodes apart: both connect from 127.0.0.1), and helm fetched the chart from it.
    with pushed.log.open("rb") as f:
        f.seek(since)
        log = f.read().decode(errors="replace")
    assert _containerd_requests(pushed, since, "gaudi-operator")
    assert re.search(r'"GET /v2/charts/gaudi-operator/manifests/[^ ]+ HTTP/1.1" 200 .*"Helm/', log)
    # And one replica leads.
    holder = wait_for(
        lambda: operator_pods.lease_holder(real, ns, f"{RELEASE}-gaudi-operator"),
        timeout=30,
        what="a lease holder",
    )
    assert operator_pods.pod_of(str(holder)) in {p["metadata"]["name"] for p in pods}
