"""The two ways deploy/argocd/README.md installs the health check put the script, byte for
byte, under the key Argo CD reads: the kustomize Component and the Argo CD chart's
`configs.cm` value set with `helm --set-file`. Runs the project's kubectl and helm; needs
no cluster."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from health_checks import HEALTH_LUA, ROOT

pytestmark = pytest.mark.cluster

KEY = "resource.customizations.health.gaudi.scalestarter.dev_GaudiTrainingJob"
BIN = Path(os.environ.get("GAUDI3_CACHE", Path.home() / ".cache" / "gaudi3")) / "bin"


def run(*cmd: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_kustomize_component_merges_the_script_into_argocd_cm(tmp_path: Path) -> None:
    # Stands for the kustomization that installs Argo CD (its manifests name no namespace;
    # the kustomization sets it): argocd-cm with one setting of its own.
    (tmp_path / "argocd-cm.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "argocd-cm",
                    "labels": {"app.kubernetes.io/part-of": "argocd"},
                },
                "data": {"timeout.reconciliation": "180s"},
            }
        )
    )
    component = os.path.relpath(ROOT / "deploy" / "argocd", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {"namespace": "argocd", "resources": ["argocd-cm.yaml"], "components": [component]}
        )
    )
    docs = list(yaml.safe_load_all(run(str(BIN / "kubectl"), "kustomize", str(tmp_path))))
    assert len(docs) == 1
    cm = docs[0]
    assert cm["metadata"]["name"] == "argocd-cm"  # no hash suffix: Argo CD reads this name
    assert cm["metadata"]["namespace"] == "argocd"
    assert cm["metadata"]["labels"] == {"app.kubernetes.io/part-of": "argocd"}
    assert cm["data"] == {"timeout.reconciliation": "180s", KEY: HEALTH_LUA.read_text()}


def test_helm_set_file_puts_the_script_under_the_argocd_cm_key(tmp_path: Path) -> None:
    # A chart that renders configs.cm the way the Argo CD chart feeds it into argocd-cm.
    chart = tmp_path / "chart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: argocd-cm-probe\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: argocd-cm\n"
        "data:\n{{ toYaml .Values.configs.cm | indent 2 }}\n"
    )
    escaped = KEY.replace(".", "\\.")
    out = run(
        str(BIN / "helm"),
        "template",
        "probe",
        str(chart),
        "--set-file",
        f"configs.cm.{escaped}=deploy/argocd/gauditrainingjob-health.lua",
    )
    cm = yaml.safe_load(out)
    assert cm["data"] == {KEY: HEALTH_LUA.read_text()}
    readme = (ROOT / "deploy" / "argocd" / "README.md").read_text()
    assert f"--set-file 'configs.cm.{escaped}=deploy/argocd/gauditrainingjob-health.lua'" in (
        readme
    )
