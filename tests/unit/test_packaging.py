"""What the operator image installs: the operator's wheel and its `operator` extra, built
here with the real build backend, exactly as the Dockerfile builds them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
# Dependencies that only the dev tools (local cluster, benchmarks, demo) need.
DEV_ONLY = {
    "cryptography",
    "pyyaml",
    "kubernetes",
    "kubernetes-asyncio",
    "gaudi-scale-starter-devtools",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (built,) = out.glob("*.whl")
    return zipfile.ZipFile(built)


def test_operator_wheel_ships_no_dev_tools(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert tops == {
        "gaudi_operator",
        "gaudi_train",
        "gaudi_kubectl",  # `kubectl gtj`, for users: the cli extra
        "gaudi_scale_starter-0.1.0.dist-info",
    }
    dev_words = ("devtools", "devcluster", "benchmark", "demo", "kwok", "pki")
    leaked = [
        n
        for n in wheel.namelist()
        if n.startswith("gaudi_operator/") and any(w in n for w in dev_words)
    ]
    assert leaked == []
    assert "gaudi_operator/crds/gauditrainingjobs.yaml" in wheel.namelist()


def test_operator_extra_pulls_nothing_only_dev_tools_need(wheel: zipfile.ZipFile) -> None:
    meta_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(wheel.read(meta_name).decode())
    by_extra: dict[str, set[str]] = {}
    for req in meta.get_all("Requires-Dist") or []:
        spec, _, marker = req.partition(";")
        name = spec.split("@")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
        extra = marker.split("extra ==")[-1].strip().strip("'\"") if "extra" in marker else ""
        by_extra.setdefault(extra, set()).add(name)
    assert by_extra.get("", set()) == set()  # the bare install pulls nothing
    assert by_extra["operator"] & DEV_ONLY == set()
    assert "gaudi-scale-starter-devtools" in by_extra["dev"]


def test_operator_image_installs_only_the_operator_extra() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert '".[operator]"' in dockerfile and "[operator]" in dockerfile
    assert "devtools" not in dockerfile and "[dev" not in dockerfile


def test_the_wheel_installs_kubectl_gtj_and_its_extra_needs_no_kubernetes_client(
    wheel: zipfile.ZipFile,
) -> None:
    """`pip install 'gaudi-scale-starter[cli]'` puts `kubectl-gtj` on PATH, where kubectl
    finds it; it reaches the API through kubectl itself."""
    points = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert "kubectl-gtj = gaudi_kubectl.cli:main" in wheel.read(points).decode()
    meta_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(wheel.read(meta_name).decode())
    cli = {
        req.split(";")[0].split(">")[0].strip().lower()
        for req in meta.get_all("Requires-Dist") or []
        if "extra == 'cli'" in req or 'extra == "cli"' in req
    }
    assert cli == {"rich", "prometheus-client"}
