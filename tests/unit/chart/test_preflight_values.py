"""The chart's preflight test pod (`preflight.*`, `helm test RELEASE --logs`): off by
default; when on, a Helm test hook that runs `gaudi3 preflight` with the release's own
settings, under a read-only account; and the CRD the chart renders has the schema digest
the preflight expects."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gaudi_operator.cli.main import app
from gaudi_operator.preflight import checks, probe
from gaudi_operator.preflight.checks import CHECKS, Settings, Status
from unit.chart.chart_tools import CHART, ROOT, helm

pytestmark = pytest.mark.unit

CRD = yaml.safe_load((ROOT / "crds" / "gauditrainingjobs.yaml").read_text())


def render(*settings: str) -> list[dict[str, Any]]:
    flags = [a for s in settings for a in ("--set", s)]
    out = helm("template", "gaudi", str(CHART), "-n", "gaudi-system", *flags).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def preflight(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        f"{d['kind']}/{d['metadata']['name']}": d
        for d in docs
        if d["metadata"]["name"].endswith(("-preflight", "-preflight-lease", "-preflight-dry-run"))
    }


def args(docs: list[dict[str, Any]]) -> list[str]:
    pod = preflight(docs)["Pod/gaudi-gaudi-operator-preflight"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["gaudi3", "preflight"]
    return container["args"]


def test_off_by_default() -> None:
    assert preflight(render()) == {}


def test_a_helm_test_pod_with_the_releases_settings() -> None:
    docs = render("preflight.enabled=true", "gaudi.hugepagesMiPerHPU=6160")
    objs = preflight(docs)
    pod = objs["Pod/gaudi-gaudi-operator-preflight"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["serviceAccountName"] == "gaudi-gaudi-operator-preflight"
    assert args(docs) == [
        "--namespace=default",
        "--lease-namespace=gaudi-system",
        "--lease-name=gaudi-gaudi-operator",  # the Deployment's --leader-election-id
        "--prometheus-url=http://prometheus-operated.monitoring.svc:9090",
        "--hugepages-mi-per-hpu=6160",
        "--scale-out-label=intel.feature.node.kubernetes.io/gaudi-scale-out=true",
        "--hpus-per-worker=8",
        "--single-node",
        "--device-plugin-selector=name=habanalabs-device-plugin-ds",
        "--skip=access",
    ]
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    op_args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--leader-election-id=gaudi-gaudi-operator" in op_args
    assert "--leader-election-namespace=gaudi-system" in op_args


def test_options_follow_the_values() -> None:
    docs = render(
        "preflight.enabled=true", "watchNamespaces={team-b}", "preflight.multiNode=true",
        "preflight.queue=gaudi", "preflight.user=system:serviceaccount:team-b:ci",
        "preflight.groups={system:serviceaccounts}", "preflight.hpusPerWorker=4",
        "gaudi.scaleOut.requireReadyNodes=false", "leaderElection.enabled=false",
        "replicaCount=1",
    )  # fmt: skip
    got = args(docs)
    assert got[0] == "--namespace=team-b"  # the first watched namespace
    for arg in (
        "--multi-node",
        "--queue=gaudi",
        "--user=system:serviceaccount:team-b:ci",
        "--group=system:serviceaccounts",
        "--hpus-per-worker=4",
        "--scale-out-label=",  # the gate is off: the preflight says so
        "--skip=operator",  # no Lease without leader election
    ):
        assert arg in got
    assert "--skip=access" not in got
    assert "Role/gaudi-gaudi-operator-preflight-lease" not in preflight(docs)


def test_the_rendered_arguments_are_what_the_command_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Settings] = {}

    async def fake_run(settings: Settings, kubeconfig: Any, *, request_timeout: float) -> list:
        seen["settings"] = settings
        return [checks.result(c, Status.PASS, "ok") for c, _ in CHECKS]

    monkeypatch.setattr(probe, "run", fake_run)
    rendered = args(
        render("preflight.enabled=true", "preflight.multiNode=true", "preflight.queue=gaudi")
    )
    out = CliRunner().invoke(app, ["preflight", *rendered], env={"KUBECONFIG": ""})
    assert out.exit_code == 0, out.output
    s = seen["settings"]
    assert (s.lease_name, s.lease_namespace, s.queue, s.multi_node) == (
        "gaudi-gaudi-operator",
        "gaudi-system",
        "gaudi",
        True,
    )
    assert s.skip == frozenset({"access"})


def test_the_account_only_reads_unless_a_dry_run_pod_is_asked_for() -> None:
    objs = preflight(render("preflight.enabled=true", "preflight.user=alice"))
    rules = objs["ClusterRole/gaudi-gaudi-operator-preflight"]["rules"]
    writes = {(r["resources"][0], v) for r in rules for v in r["verbs"] if v not in ("get", "list")}
    assert writes == {("subjectaccessreviews", "create")}  # a question, not a write
    lease = objs["Role/gaudi-gaudi-operator-preflight-lease"]["rules"]
    assert lease == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["gaudi-gaudi-operator"],
            "verbs": ["get"],
        }
    ]
    assert "Role/gaudi-gaudi-operator-preflight-dry-run" not in objs
    dry = preflight(render("preflight.enabled=true", "preflight.dryRunPod=true"))
    role = dry["Role/gaudi-gaudi-operator-preflight-dry-run"]
    assert role["metadata"]["namespace"] == "default"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("preflight.hpusPerWorker=3", "'/preflight/hpusPerWorker': value must be one of"),
        ("preflight.namespace=Team_A", "'/preflight/namespace': 'Team_A' does not match"),
        ("preflight.dryRun=true", "'/preflight': additional properties 'dryRun' not allowed"),
    ],
)
def test_a_bad_preflight_value_fails_rendering_and_names_it(setting: str, named: str) -> None:
    out = helm("template", "gaudi", str(CHART), "--set", setting, check=False)
    assert out.returncode != 0, f"--set {setting} was accepted"
    assert named in out.stderr, out.stderr


def test_the_charts_crd_has_the_schema_the_preflight_expects() -> None:
    # Helm turns the file into objects and back (numbers become floats on the way).
    rendered = next(d for d in render() if d["kind"] == "CustomResourceDefinition")
    assert checks.schema_digest(rendered) == checks.schema_digest(probe.packaged_crd())
    assert checks.schema_digest(CRD) == checks.schema_digest(probe.packaged_crd())
