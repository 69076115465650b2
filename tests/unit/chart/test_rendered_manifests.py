"""What the chart renders, for every values set in charts/gaudi-operator/ci/, and the
examples, pass `kubeconform -strict` against the pinned Kubernetes version's schemas, the
Prometheus Operator's and our CRD's; and those schemas do refuse what the API server would."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from unit.chart.chart_tools import CHART, ROOT, VALUES_SETS, crd_schemas, helm, kubeconform

EXAMPLES = sorted(
    str(p)
    for p in [*(ROOT / "examples").glob("*.yaml"), *(ROOT / "examples" / "kueue").glob("*.yaml")]
)
SUMMARY = re.compile(
    r"(\d+) resources found in \d+ files? - Valid: (\d+), Invalid: (\d+), "
    r"Errors: (\d+), Skipped: (\d+)"
)


@pytest.fixture(scope="module")
def crds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return crd_schemas(tmp_path_factory.mktemp("crd-schemas"))


def counts(output: str) -> tuple[int, ...]:
    m = SUMMARY.search(output)
    assert m, output
    return tuple(int(g) for g in m.groups())


def render(values: Path, out: Path) -> list[dict]:
    args = ("template", "gaudi", str(CHART), "-n", "gaudi-system", "--include-crds")
    rendered = helm(*args, "-f", str(values)).stdout
    out.write_text(rendered)
    return [d for d in yaml.safe_load_all(rendered) if d]


def kinds(docs: list[dict]) -> Iterator[str]:
    """Kinds, with the namespace for RoleBindings (one per watched namespace)."""
    for d in docs:
        ns = d["metadata"].get("namespace", "")
        yield f"{d['kind']}/{ns}" if d["kind"] == "RoleBinding" else d["kind"]


@pytest.mark.parametrize("values", VALUES_SETS, ids=lambda p: p.name.removesuffix("-values.yaml"))
def test_every_rendered_object_is_valid_strict(values: Path, crds: Path, tmp_path: Path) -> None:
    docs = render(values, tmp_path / "rendered.yaml")
    out = kubeconform(crds, str(tmp_path / "rendered.yaml"))
    found, valid, invalid, errors, skipped = counts(out.stdout)
    assert out.returncode == 0 and (invalid, errors, skipped) == (0, 0, 0), out.stdout
    assert found == valid == len(docs)


def test_the_values_sets_render_what_they_switch_on(tmp_path: Path) -> None:
    by_set = {v.name: sorted(kinds(render(v, tmp_path / "r.yaml"))) for v in VALUES_SETS}
    default = by_set["default-values.yaml"]
    assert "ClusterRoleBinding" in default and "ServiceMonitor" not in default
    assert default.count("ClusterRoleBinding") == 2  # cluster-wide: jobs bound everywhere
    namespaced = by_set["namespaced-values.yaml"]
    assert namespaced.count("ClusterRoleBinding") == 1
    assert {"RoleBinding/team-a", "RoleBinding/team-b"} <= set(namespaced)
    assert "ServiceMonitor" in by_set["monitoring-values.yaml"]


def test_examples_are_valid_strict_against_the_crd(crds: Path) -> None:
    # Files of GaudiTrainingJobs (examples/kueue/kueue-queue.yaml holds Kueue's own objects).
    jobs = [f for f in EXAMPLES if "kind: GaudiTrainingJob" in Path(f).read_text()]
    docs = [d for f in jobs for d in yaml.safe_load_all(Path(f).read_text()) if d]
    assert len(jobs) >= 8 and sum(d["kind"] == "GaudiTrainingJob" for d in docs) == len(jobs)
    out = kubeconform(crds, *jobs)
    found, valid, invalid, errors, skipped = counts(out.stdout)
    assert out.returncode == 0 and found == valid == len(docs), out.stdout
    assert (invalid, errors, skipped) == (0, 0, 0)


def test_the_schemas_refuse_unknown_and_mistyped_fields(crds: Path, tmp_path: Path) -> None:
    job = yaml.safe_load((ROOT / "examples" / "single-node-8hpu.yaml").read_text())
    job["spec"]["failurePolicy"] = {"maxRestart": 3}  # misspelled
    job["spec"]["workers"]["replicas"] = "two"
    deployment = next(
        d
        for d in yaml.safe_load_all(helm("template", "gaudi", str(CHART)).stdout)
        if d and d["kind"] == "Deployment"
    )
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = ["Always"]
    deployment["spec"]["strategy"]["rollingUpdat"] = {}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all([job, deployment]))
    out = kubeconform(crds, str(bad))
    assert out.returncode != 0
    assert counts(out.stdout)[2] == 2, out.stdout  # both invalid
    for named in (
        "'/spec/failurePolicy': additional properties 'maxRestart' not allowed",
        "'/spec/workers/replicas': got string, want integer",
        "'/spec/strategy': additional properties 'rollingUpdat' not allowed",
        "'/spec/template/spec/containers/0/imagePullPolicy': got array, want string",
    ):
        assert named in out.stdout, out.stdout


def test_a_quantity_and_a_port_take_a_number_or_a_string(crds: Path, tmp_path: Path) -> None:
    # The API server takes `cpu: 1` and `port: http`; so must the schemas.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "i",
                    "resources": {"requests": {"cpu": 1, "memory": "1Gi"}},
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
                    "livenessProbe": {"httpGet": {"path": "/", "port": 8080}},
                }
            ]
        },
    }
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    out = kubeconform(crds, str(tmp_path / "pod.yaml"))
    assert out.returncode == 0, out.stdout
