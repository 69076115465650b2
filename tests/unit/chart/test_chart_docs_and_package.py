"""The chart README is what helm-docs makes of values.yaml now, and `make chart` packages a
versioned .tgz that carries the CRD file itself, not the repository's link to it (in
files/crds/, which templates/crd.yaml renders; not in crds/, which Helm never upgrades)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import yaml

from unit.chart.chart_tools import CHART, ROOT, make_chart, run, tool


def test_chart_readme_is_generated_from_the_values_comments(tmp_path: Path) -> None:
    # helm-docs writes README.md next to Chart.yaml: regenerate in a copy, then compare.
    copy = tmp_path / "charts" / "gaudi-operator"
    copy.mkdir(parents=True)
    for name in ("Chart.yaml", "values.yaml", "README.md.gotmpl"):
        (copy / name).write_text((CHART / name).read_text())
    run(tool("helm-docs"), "--chart-search-root", str(tmp_path / "charts"))
    fresh = (copy / "README.md").read_text()
    assert (CHART / "README.md").read_text() == fresh, "stale chart README: run `make chart-docs`"
    # Every documented value made it into the table.
    for line in ("| replicaCount | int | `2` |", "| grafanaDashboards.enabled | bool | `false` |"):
        assert line in fresh


def test_make_chart_packages_a_versioned_tgz_with_the_crd_file(tmp_path: Path) -> None:
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    package = make_chart(tmp_path / "dist")
    assert package.name == f"gaudi-operator-{version}.tgz"
    with tarfile.open(package) as tgz:
        names = set(tgz.getnames())
        crd = tgz.getmember("gaudi-operator/files/crds/gauditrainingjobs.yaml")
        assert crd.isfile()
        data = tgz.extractfile(crd)
        assert data is not None
        assert data.read() == (ROOT / "crds" / "gauditrainingjobs.yaml").read_bytes()
    assert {"gaudi-operator/values.schema.json", "gaudi-operator/templates/NOTES.txt"} <= names
    assert not any("/ci/" in n or n.endswith(".gotmpl") for n in names), names
    assert not any(n.startswith("gaudi-operator/crds/") for n in names), names
