"""The chart's tools as the tests run them: helm, kubeconform with the offline schemas that
hack/toolchain.sh makes, helm-docs, and `make chart`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "gaudi-operator"
VALUES_SETS = sorted((CHART / "ci").glob("*-values.yaml"))
CACHE = Path(os.environ.get("GAUDI3_CACHE", Path.home() / ".cache" / "gaudi3"))
SCHEMAS = CACHE / "kubeconform"
# kubeconform fills this in per object: e.g. deployment-apps-v1-strict.json.
SCHEMA_FILE = "{{ .ResourceKind }}{{ .KindSuffix }}{{ .StrictSuffix }}.json"


def tool(name: str) -> str:
    path = CACHE / "bin" / name
    assert path.exists(), f"{path} is missing: run `make chart-tools` (or `make setup`)"
    return str(path)


def run(*cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check:
        assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(tool("helm"), *args, check=check)


def crd_schemas(out: Path) -> Path:
    """Our CRDs' kubeconform schemas, made from crds/ as it is now."""
    crds = sorted(str(p) for p in (ROOT / "crds").glob("*.yaml"))
    run(sys.executable, str(ROOT / "hack" / "kubeschemas.py"), "crd", str(out), *crds)
    return out


def kubeconform(crd_dir: Path, *files: str) -> subprocess.CompletedProcess[str]:
    """kubeconform -strict over the Kubernetes, Prometheus Operator and our CRD schemas; the
    caller judges the result."""
    roots = [SCHEMAS / "kubernetes", SCHEMAS / "prometheus-operator", crd_dir]
    for r in roots[:2]:
        assert r.is_dir(), f"{r} is missing: run `make chart-tools`"
    locations = [a for r in roots for a in ("-schema-location", f"{r}/{SCHEMA_FILE}")]
    return run(tool("kubeconform"), "-strict", "-summary", *locations, *files, check=False)


def make_chart(dist: Path) -> Path:
    """`make chart` into ``dist``; the path of the versioned package it wrote."""
    run("make", "-s", "chart", f"DIST={dist}", timeout=600)
    packages = list(dist.glob("gaudi-operator-*.tgz"))
    assert len(packages) == 1, packages
    return packages[0]
