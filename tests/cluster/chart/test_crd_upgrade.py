"""The chart's CRD upgrade path on a real API server: `helm install` creates the CRD,
`helm upgrade` with a changed CRD serves the change (Helm never upgrades a chart's crds/, so
the chart renders it from templates/crd.yaml), and `helm uninstall` keeps the CRD and the
jobs (`helm.sh/resource-policy: keep`). A CRD applied with kubectl first is adopted as the
chart README says.

It uses a cluster of its own: it deletes and re-creates the CRD, which would take every
other test's jobs with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.gtj import CRD, GROUP, PLURAL, ROOT, job_body
from conftest import wait_for
from gaudi_devtools.cluster import Cluster
from gaudi_devtools.cluster.cluster import Settings

CHART = ROOT / "charts" / "gaudi-operator"
NAME = f"{PLURAL}.{GROUP}"
NS = "gaudi-system"


@pytest.fixture(scope="module")
def crd_cluster() -> Iterator[Cluster]:
    c = Cluster(f"crd-upgrade-{os.getpid()}")
    c.up(Settings(gaudi_nodes=1))
    try:
        yield c
    finally:
        c.delete()


def helm(c: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [c.tool("helm"), "--kubeconfig", str(c.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if check:
        assert out.returncode == 0, out.stderr
    return out


def served_crd(c: Cluster) -> dict[str, Any]:
    return json.loads(c.kubectl("get", "crd", NAME, "-o", "json").stdout)


def wait_established(c: Cluster) -> None:
    # Not `kubectl wait`: right after a create it fails on a CRD with no conditions yet.
    def established() -> bool:
        out = c.kubectl("get", "crd", NAME, "-o", "json", check=False)
        conds = json.loads(out.stdout or "{}").get("status", {}).get("conditions") or []
        return any(x["type"] == "Established" and x["status"] == "True" for x in conds)

    wait_for(established, timeout=60, interval=0.5, what="the CRD Established")


def spec_schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def changed_chart(tmp_path: Path) -> Path:
    """The chart as the next release would ship it: its CRD has a new field and a new
    description. (A copy: the repository's CRD file stays as it is.)"""
    chart = tmp_path / "gaudi-operator"
    shutil.copytree(CHART, chart, symlinks=False)  # the files/crds link becomes a file
    path = chart / "files" / "crds" / "gauditrainingjobs.yaml"
    crd = yaml.safe_load(path.read_text())
    spec = spec_schema(crd)
    spec["properties"]["upgradeProbe"] = {"type": "string", "description": "New in the upgrade."}
    spec["properties"]["image"]["description"] = "Reworded in the upgrade."
    path.write_text(yaml.safe_dump(crd))
    return chart


def create_job(c: Cluster, name: str, **spec: Any) -> None:
    body = job_body(name, suspend=True, **spec)  # no operator here; nothing to run
    c.kubectl("create", "-n", "default", "-f", "-", input=json.dumps(body))


def wait_served(c: Cluster, field: str, present: bool) -> None:
    def check() -> bool:
        return (field in spec_schema(served_crd(c))["properties"]) == present

    wait_for(check, timeout=30, what=f"spec.{field} {'in' if present else 'gone from'} the CRD")


def test_helm_upgrade_serves_a_changed_crd_and_uninstall_keeps_it_and_the_jobs(
    crd_cluster: Cluster, tmp_path: Path
) -> None:
    c = crd_cluster
    helm(c, "install", "gaudi", str(CHART), "-n", NS, "--create-namespace")
    wait_established(c)
    crd = served_crd(c)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == "gaudi"
    create_job(c, "before-upgrade")

    helm(c, "upgrade", "gaudi", str(changed_chart(tmp_path)), "-n", NS)
    wait_served(c, "upgradeProbe", present=True)
    assert spec_schema(served_crd(c))["properties"]["image"]["description"] == (
        "Reworded in the upgrade."
    )
    # The API server serves the new schema: the new field is accepted, strictly.
    create_job(c, "after-upgrade", upgradeProbe="yes")

    def explained() -> bool:
        out = c.kubectl("explain", "gtj.spec.upgradeProbe", check=False)
        return "New in the upgrade." in out.stdout

    wait_for(explained, timeout=60, interval=0.5, what="kubectl explain of the new field")

    # Rolling back to the repository's chart takes the field away again.
    helm(c, "upgrade", "gaudi", str(CHART), "-n", NS)
    wait_served(c, "upgradeProbe", present=False)

    out = helm(c, "uninstall", "gaudi", "-n", NS)
    assert "kept due to the resource policy" in out.stdout, out.stdout
    assert served_crd(c)["metadata"]["name"] == NAME
    jobs = c.kubectl("get", "gtj", "-n", "default", "-o", "name").stdout.split()
    assert sorted(jobs) == [
        f"gauditrainingjob.{GROUP}/after-upgrade",
        f"gauditrainingjob.{GROUP}/before-upgrade",
    ]


def test_a_crd_applied_with_kubectl_is_adopted_as_the_readme_says(
    crd_cluster: Cluster, tmp_path: Path
) -> None:
    c = crd_cluster
    # A cluster whose CRD someone applied by hand (or an older chart's crds/ installed).
    c.kubectl("delete", "crd", NAME, "--ignore-not-found", "--wait=true")
    c.kubectl("apply", "--server-side", "-f", str(CRD))
    wait_established(c)
    create_job(c, "hand-made")

    refused = helm(c, "install", "adopt", str(CHART), "-n", NS, "--create-namespace", check=False)
    assert refused.returncode != 0
    assert "invalid ownership metadata" in refused.stderr, refused.stderr

    helm(c, "install", "adopt", str(CHART), "-n", NS, "--create-namespace", "--take-ownership")
    assert served_crd(c)["metadata"]["annotations"]["meta.helm.sh/release-name"] == "adopt"
    # kubectl still co-owns the fields it applied: the first upgrade that changes them
    # conflicts, and --force-conflicts hands them to Helm once.
    changed = str(changed_chart(tmp_path))
    conflict = helm(c, "upgrade", "adopt", changed, "-n", NS, check=False)
    assert conflict.returncode != 0 and 'conflict with "kubectl"' in conflict.stderr
    helm(c, "upgrade", "adopt", changed, "-n", NS, "--force-conflicts")
    wait_served(c, "upgradeProbe", present=True)
    helm(c, "upgrade", "adopt", str(CHART), "-n", NS)  # from now on, plain upgrades
    wait_served(c, "upgradeProbe", present=False)
    helm(c, "uninstall", "adopt", "-n", NS)
    jobs = c.kubectl("get", "gtj", "-n", "default", "-o", "name").stdout
    assert "hand-made" in jobs


def test_one_release_owns_the_crd_and_the_others_set_crds_enabled_false(
    crd_cluster: Cluster,
) -> None:
    c = crd_cluster
    rendered = helm(c, "template", "x", str(CHART), "--set", "crds.enabled=false").stdout
    assert "kind: CustomResourceDefinition" not in rendered
    # Whatever the earlier tests left (a kept CRD names its last release), team-a owns it now.
    helm(c, "install", "team-a", str(CHART), "-n", "team-a", "--create-namespace",
         "--take-ownership")  # fmt: skip
    clash = helm(c, "install", "team-b", str(CHART), "-n", "team-b", "--create-namespace",
                 check=False)  # fmt: skip
    assert clash.returncode != 0 and "invalid ownership metadata" in clash.stderr
    helm(c, "install", "team-b", str(CHART), "-n", "team-b", "--create-namespace",
         "--set", "crds.enabled=false")  # fmt: skip
    assert served_crd(c)["metadata"]["annotations"]["meta.helm.sh/release-name"] == "team-a"
    helm(c, "uninstall", "team-b", "-n", "team-b")
    # Turned off later, the CRD leaves the release but stays in the cluster (it is kept).
    helm(c, "upgrade", "team-a", str(CHART), "-n", "team-a", "--set", "crds.enabled=false")
    assert served_crd(c)["metadata"]["name"] == NAME
    helm(c, "uninstall", "team-a", "-n", "team-a")
    # The kept CRD still names team-a: the same release installs again without a flag.
    helm(c, "install", "team-a", str(CHART), "-n", "team-a")
    helm(c, "uninstall", "team-a", "-n", "team-a")
    assert served_crd(c)["metadata"]["name"] == NAME
