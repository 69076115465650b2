"""The release workflow (.github/workflows/release.yml) passes actionlint, and publishes the
images where the chart and the examples point: ghcr.io/<owner>/<image>, with <owner> the
chart's gaudi-scale-starter when it runs upstream."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
WORKFLOWS = ROOT / ".github" / "workflows"
RELEASE = WORKFLOWS / "release.yml"
CACHE = Path(os.environ.get("GAUDI3_CACHE", Path.home() / ".cache" / "gaudi3"))
UPSTREAM = "ghcr.io/gaudi-scale-starter/"


def actionlint() -> str:
    found = CACHE / "bin" / "actionlint"
    if found.exists():
        return str(found)
    on_path = shutil.which("actionlint")
    if on_path is None:
        pytest.skip("actionlint is not built: bash hack/toolchain.sh actionlint")
    return on_path


def lint(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [actionlint(), "-no-color", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_every_workflow_passes_actionlint() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert RELEASE in files
    out = lint(*files)
    assert out.returncode == 0, out.stdout + out.stderr


def test_actionlint_reports_a_broken_workflow(tmp_path: Path) -> None:
    # The check above can fail: an undefined job output and a typo'd key are errors.
    broken = RELEASE.read_text().replace(
        "needs.version.outputs.version", "needs.version.outputs.versoin", 1
    )
    broken = broken.replace("runs-on: ubuntu-24.04", "runs_on: ubuntu-24.04", 1)
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    path = tmp_path / ".github" / "workflows" / "release.yml"
    path.write_text(broken)
    out = lint(path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "versoin" in out.stdout and "runs_on" in out.stdout


def test_it_runs_on_version_tags_only() -> None:
    wf = yaml.safe_load(RELEASE.read_text())
    triggers = wf[True]  # YAML 1.1 reads the key `on` as true
    assert triggers == {"push": {"tags": ["v*"]}}


def _published() -> set[str]:
    """Image names the workflow publishes under ghcr.io/<owner>/: `make push`'s (the names
    hack/push-images.sh gives) and the docker/build-push-action tags."""
    wf = yaml.safe_load(RELEASE.read_text())
    names: set[str] = set()
    for job in wf["jobs"].values():
        for step in job["steps"]:
            if "make push" in step.get("run", ""):
                script = (ROOT / "hack" / "push-images.sh").read_text()
                names |= set(re.findall(r"\bname=([a-z0-9-]+)", script))
            if str(step.get("uses", "")).startswith("docker/build-push-action@"):
                tag = step["with"]["tags"]
                assert tag.startswith("${{ needs.version.outputs.registry }}/"), tag
                names.add(tag.split("/", 1)[1].split(":", 1)[0])
    return names


def test_it_publishes_the_chart_s_image_and_the_examples_images() -> None:
    values = yaml.safe_load((ROOT / "charts" / "gaudi-operator" / "values.yaml").read_text())
    wanted = {values["image"]["repository"]}
    for example in sorted((ROOT / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(example.read_text()):
            image = ((doc or {}).get("spec") or {}).get("image", "")
            if isinstance(image, str) and image.startswith(UPSTREAM):
                wanted.add(image.rsplit(":", 1)[0])
    assert all(w.startswith(UPSTREAM) for w in wanted), wanted
    missing = {w.removeprefix(UPSTREAM) for w in wanted} - _published()
    assert not missing, f"the release publishes no {sorted(missing)}"
    # The owner is the repository's (lower-cased), which upstream is gaudi-scale-starter.
    assert "registry=ghcr.io/${GITHUB_REPOSITORY_OWNER,,}" in RELEASE.read_text()
