"""The chart's tenant policy (templates/admission-policy.yaml) enforced by the real API server:
each template field that reaches the host is refused, naming the field; the same job is
accepted where a namespace label or the chart's values allow it; a plain job, and the
operator's own SYS_NICE and hostIPC, are accepted everywhere.

The policy is rendered by `helm template` and applied as is, with its binding narrowed to
namespaces carrying this module's own label: the session's cluster is shared with other
modules (real-node jobs with hostNetwork), whose jobs it must never refuse. Everything is
deleted at the end. Most checks are `--dry-run=server` creates: admission runs, nothing is
stored."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.gtj import GROUP, VERSION
from conftest import wait_for
from unit.chart.chart_tools import CHART, helm

U = uuid.uuid4().hex[:6]
SELECTOR = "gaudi3-test.scalestarter.dev/admission"  # only this module's namespaces carry it
ALLOW = "gaudi.scalestarter.dev/allow-"
EVERY_ALLOWANCE = ("privileged", "capabilities", "host-pid", "host-network", "host-path",
                   "node-name")  # fmt: skip
NS = {  # role -> namespace name
    "release": f"adm-{U}-system",
    "plain": f"adm-{U}-plain",  # the policy's defaults
    "labelled": f"adm-{U}-labelled",  # every allow-* label, and a service account annotated
    "values": f"adm-{U}-values",  # the same through the chart's admissionPolicy.namespaces
    "network-only": f"adm-{U}-net",  # allow-host-network alone
    "unbound": f"adm-{U}-unbound",  # without the module's label: not policed
    "warn": f"adm-{U}-warn",  # bound to the Warn-only release
    "devtools": f"adm-{U}-devtools",  # labelled by gaudi_devtools during the test
}
NAMESPACE_LABELS = {
    "plain": {},
    "labelled": {f"{ALLOW}{a}": "true" for a in EVERY_ALLOWANCE},
    "values": {},
    "network-only": {f"{ALLOW}host-network": "true"},
}
RELEASE, WARN_RELEASE = f"adm-{U}", f"adm-warn-{U}"
DENY_VALUES = {  # admissionPolicy.* of the Deny release
    "serviceAccounts": ["default", "shared"],
    "namespaces": {NS["values"]: {"allow": list(EVERY_ALLOWANCE), "serviceAccounts": ["builder"]}},
    "namespaceSelector": {"matchLabels": {SELECTOR: U}},
}
POLICY = f"{RELEASE}-gaudi-operator-tenants"


def job(name: str, pod_spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """A suspended job (no pods, whichever operator sees it) with this template spec."""
    spec: dict[str, Any] = {"image": "busybox", "suspend": True}
    if pod_spec is not None:
        spec["template"] = {"spec": pod_spec}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GaudiTrainingJob",
        "metadata": {"name": name},
        "spec": spec,
    }


# Each forbidden template field, and the path the refusal must name.
FORBIDDEN: dict[str, tuple[dict[str, Any], str]] = {
    "privileged": (
        {"containers": [{"name": "worker", "securityContext": {"privileged": True}}]},
        'spec.template.spec.containers[name="worker"].securityContext.privileged',
    ),
    "escalating-init-container": (
        {
            "initContainers": [
                {
                    "name": "setup",
                    "image": "busybox",
                    "securityContext": {"allowPrivilegeEscalation": True},
                },
            ]
        },
        'spec.template.spec.initContainers[name="setup"].securityContext.allowPrivilegeEscalation',
    ),
    "privileged-ephemeral-container": (
        {"ephemeralContainers": [{"name": "debug", "securityContext": {"privileged": True}}]},
        'spec.template.spec.ephemeralContainers[name="debug"].securityContext.privileged',
    ),
    "capability": (
        {
            "containers": [
                {
                    "name": "sidecar",
                    "image": "busybox",
                    "securityContext": {"capabilities": {"add": ["SYS_NICE", "NET_ADMIN"]}},
                },
            ]
        },
        'spec.template.spec.containers[name="sidecar"].securityContext.capabilities.add: '
        "NET_ADMIN:",
    ),
    "hostPID": ({"hostPID": True}, "spec.template.spec.hostPID:"),
    "hostNetwork": ({"hostNetwork": True}, "spec.template.spec.hostNetwork:"),
    "hostPath": (
        {"volumes": [{"name": "host", "hostPath": {"path": "/"}}]},
        'spec.template.spec.volumes[name="host"].hostPath:',
    ),
    "nodeName": ({"nodeName": "kwok-node-0"}, "spec.template.spec.nodeName:"),
    "serviceAccountName": (
        {"serviceAccountName": "builder"},
        'spec.template.spec.serviceAccountName: service account "builder" is not allowed',
    ),
    "serviceAccount": (
        {"serviceAccount": "builder"},
        'spec.template.spec.serviceAccount: service account "builder" is not allowed',
    ),
}


def kubectl(c: Any, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return c.kubectl(*args, input=input, check=False, timeout=60)


def create(c: Any, ns: str, body: dict[str, Any], *, dry_run: bool = True) -> Any:
    extra = ["--dry-run=server"] if dry_run else []
    return kubectl(c, "create", "-n", ns, *extra, "-o", "name", "-f", "-", input=json.dumps(body))


def render(release: str, values: dict[str, Any], tmp: Path) -> str:
    """The chart's policy objects only, as `helm template` renders them with these values."""
    file = tmp / f"{release}-values.json"
    file.write_text(json.dumps({"admissionPolicy": values}))
    return helm(
        "template", release, str(CHART), "-n", NS["release"],
        "--show-only", "templates/admission-policy.yaml", "-f", str(file),
    ).stdout  # fmt: skip


def refused_with(out: subprocess.CompletedProcess[str], text: str) -> bool:
    return out.returncode != 0 and "denied request" in out.stderr and text in out.stderr


@pytest.fixture(scope="module")
def policy(cluster: Any, crd: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Both releases' policies applied, enforced; yields the cluster; all deleted after."""
    c = cluster
    tmp = tmp_path_factory.mktemp("admission")
    deny = render(RELEASE, DENY_VALUES, tmp)
    warn = render(
        WARN_RELEASE,
        {"validationActions": ["Warn"], "namespaceSelector": {"matchLabels": {SELECTOR: f"w{U}"}}},
        tmp,
    )
    manifests = [tmp / "deny.yaml", tmp / "warn.yaml"]
    manifests[0].write_text(deny)
    manifests[1].write_text(warn)
    namespaces = []
    for role, name in NS.items():
        labels = {**NAMESPACE_LABELS.get(role, {})}
        if role not in ("release", "unbound"):
            labels[SELECTOR] = f"w{U}" if role == "warn" else U
        meta: dict[str, Any] = {"name": name, "labels": labels}
        if role == "labelled":
            meta["annotations"] = {"gaudi.scalestarter.dev/service-accounts": "builder, trainer"}
        namespaces.append({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    try:
        c.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                        "items": namespaces}))  # fmt: skip
        for m in manifests:
            c.kubectl("apply", "-f", str(m))
        # A new policy takes a moment to load: enforced once a forbidden job is refused.
        probe = job("probe", {"hostNetwork": True})
        wait_for(
            lambda: refused_with(create(c, NS["plain"], probe), "hostNetwork"),
            timeout=60, interval=0.5, what="the policy enforced",
        )  # fmt: skip
        wait_for(
            lambda: "Warning:" in create(c, NS["warn"], probe).stderr,
            timeout=60, interval=0.5, what="the Warn policy loaded",
        )  # fmt: skip
        yield c
    finally:
        for m in manifests:
            c.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", str(m), check=False)
        names = [n["metadata"]["name"] for n in namespaces]
        c.kubectl("delete", "namespace", "--ignore-not-found", "--wait=false", *names, check=False)


def type_warnings(c: Any, name: str) -> list[dict[str, Any]]:
    """The API server's type-check warnings for policy `name`, once it checked this version."""

    def checked() -> dict[str, Any] | None:
        got = json.loads(c.kubectl("get", "validatingadmissionpolicy", name, "-o", "json").stdout)
        status = got.get("status") or {}
        return status if status.get("observedGeneration") == got["metadata"]["generation"] else None

    status = wait_for(checked, timeout=60, interval=0.5, what=f"{name} type-checked")
    assert isinstance(status, dict)
    return list((status.get("typeChecking") or {}).get("expressionWarnings", []))


def inlined(expression: str, variables: dict[str, str]) -> str:
    """`expression` with every `variables.<name>` replaced by that variable's expression."""
    pattern = re.compile(r"\bvariables\.([A-Za-z_][A-Za-z0-9_]*)")
    while True:
        done = pattern.sub(lambda m: f"({variables[m.group(1)]})", expression)
        if done == expression:
            return done
        expression = done


def test_every_expression_type_checks_against_the_crd_schema(policy: Any, tmp_path: Path) -> None:
    """The API server type-checks a policy's validations and messages against the CRD's
    schema (status.typeChecking) when the policy names a version (the chart's "*" does not),
    but not its variables, and a field read through a variable is untyped there. So every
    variable, validation and message is checked with its variables inlined, as the
    validations of a probe policy for v1alpha1 that no binding uses (it judges nothing).
    One deliberate typo proves the checker ran."""
    rendered = [d for d in yaml.safe_load_all(render(RELEASE, DENY_VALUES, tmp_path)) if d]
    vap = next(d for d in rendered if d["kind"] == "ValidatingAdmissionPolicy")
    spec = vap["spec"]
    (rule,) = spec["matchConstraints"]["resourceRules"]
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    expressions = [*variables.values()]
    for v in spec["validations"]:
        expressions += [v["expression"], v["messageExpression"]]
    typo = "variables.containers.map(c, c.securityContxt.privileged)"
    probe = {
        "apiVersion": vap["apiVersion"],
        "kind": vap["kind"],
        "spec": {
            # A named version: the API server type-checks only then (the chart's "*" skips it).
            "matchConstraints": {"resourceRules": [{**rule, "apiVersions": [VERSION]}]},
            # Any type goes in a list; the size test makes it a boolean for the API.
            "validations": [
                {"expression": f"size([{inlined(e, variables)}]) == 1"}
                for e in [*expressions, typo]
            ],
        },
    }
    name = f"adm-probe-{U}"
    try:
        policy.kubectl("apply", "-f", "-", input=json.dumps({**probe, "metadata": {"name": name}}))
        warnings = type_warnings(policy, name)
    finally:
        policy.kubectl(
            "delete", "validatingadmissionpolicy", name, "--ignore-not-found", check=False
        )
    assert [w["fieldRef"] for w in warnings] == [
        f"spec.validations[{len(expressions)}].expression"
    ], warnings
    assert "undefined field 'securityContxt'" in warnings[0]["warning"]


@pytest.mark.parametrize("case", list(FORBIDDEN))
def test_each_forbidden_template_field_is_refused_naming_it(policy: Any, case: str) -> None:
    pod_spec, path = FORBIDDEN[case]
    out = create(policy, NS["plain"], job(f"bad-{case.lower()}", pod_spec))
    assert out.returncode != 0, f"{case}: accepted"
    assert "(Forbidden)" in out.stderr and f"'{POLICY}'" in out.stderr, out.stderr
    assert path in out.stderr, out.stderr


@pytest.mark.parametrize("role", ["labelled", "values"])
@pytest.mark.parametrize("case", list(FORBIDDEN))
def test_the_same_job_is_accepted_where_the_namespace_is_allowed(
    policy: Any, case: str, role: str
) -> None:
    out = create(policy, NS[role], job(f"ok-{case.lower()}", FORBIDDEN[case][0]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"gauditrainingjob.{GROUP}/ok-{case.lower()}", out.stdout


def test_one_allowance_widens_only_its_own_field(policy: Any) -> None:
    network, host_path = FORBIDDEN["hostNetwork"][0], FORBIDDEN["hostPath"][0]
    assert create(policy, NS["network-only"], job("net", network)).returncode == 0
    out = create(policy, NS["network-only"], job("net-and-path", {**network, **host_path}))
    assert refused_with(out, FORBIDDEN["hostPath"][1]), out.stderr


@pytest.mark.parametrize(
    "pod_spec",
    [
        None,  # no template at all
        {"containers": [{"name": "worker", "env": [{"name": "A", "value": "1"}]}]},
        # What the operator itself adds to HPU workers, asked for in the template.
        {"hostIPC": True, "containers": [
            {"name": "worker", "securityContext": {"capabilities": {"add": ["SYS_NICE"]}}}]},
        # Explicitly unprivileged, and every container dropping everything.
        {"containers": [{"name": "worker", "securityContext": {
            "privileged": False, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}}}]},
        {"serviceAccountName": "default"},
        {"serviceAccountName": "shared"},  # in admissionPolicy.serviceAccounts
        {"volumes": [{"name": "scratch", "emptyDir": {}}], "hostNetwork": False},
    ],
    ids=["no-template", "env", "sys-nice-and-host-ipc", "unprivileged", "default-sa",
         "shared-sa", "empty-dir"],
)  # fmt: skip
def test_plain_jobs_and_the_operators_own_sys_nice_are_accepted(
    policy: Any, pod_spec: dict[str, Any] | None
) -> None:
    out = create(policy, NS["plain"], job("plain", pod_spec))
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr


def test_namespaces_outside_the_binding_are_not_policed(policy: Any) -> None:
    out = create(policy, NS["unbound"], job("host", FORBIDDEN["hostNetwork"][0]))
    assert out.returncode == 0, out.stderr


def test_warn_reports_a_forbidden_field_without_refusing(policy: Any) -> None:
    out = create(policy, NS["warn"], job("warned", FORBIDDEN["hostPath"][0]))
    assert out.returncode == 0, out.stderr
    assert "Warning:" in out.stderr and FORBIDDEN["hostPath"][1] in out.stderr, out.stderr


def test_an_update_that_adds_a_forbidden_field_is_refused(policy: Any) -> None:
    ns = NS["plain"]
    assert create(policy, ns, job("grows"), dry_run=False).returncode == 0
    patch = json.dumps({"spec": {"template": {"spec": {"hostNetwork": True}}}})
    out = kubectl(policy, "patch", "gtj", "grows", "-n", ns, "--type=merge", "-p", patch)
    assert refused_with(out, FORBIDDEN["hostNetwork"][1]), out.stderr


def test_updates_that_leave_the_template_are_not_checked_again(policy: Any) -> None:
    """A job admitted while its namespace allowed hostNetwork keeps being writable (a spec
    field such as the operator's spec.suspend, a label, a scale) after the label goes; a new
    template is checked against the namespace as it is now."""
    c, ns = policy, NS["network-only"]
    body = job("legacy", FORBIDDEN["hostNetwork"][0])
    assert create(c, ns, body, dry_run=False).returncode == 0
    c.kubectl("label", "namespace", ns, f"{ALLOW}host-network-")
    # The API server reads namespaces from its informer: wait until it saw the change.
    wait_for(
        lambda: refused_with(create(c, ns, job("probe", FORBIDDEN["hostNetwork"][0])),
                             "hostNetwork"),
        timeout=30, interval=0.5, what="the namespace's label gone for the policy",
    )  # fmt: skip
    # The job stays suspended (no pods, should an operator run on this cluster); a change
    # of spec.suspend is the same kind of write as the failure policy's here.
    restarts = json.dumps({"spec": {"failurePolicy": {"maxRestarts": 3}}})
    for args in (
        ["patch", "gtj", "legacy", "--type=merge", "-p", restarts],
        ["label", "gtj", "legacy", "team=a"],
        ["scale", "gtj", "legacy", "--replicas=2"],
    ):
        out = kubectl(c, *args, "-n", ns)
        assert out.returncode == 0, f"{args}: {out.stderr}"
    env = {"containers": [{"name": "worker", "env": [{"name": "A", "value": "1"}]}]}
    patch = json.dumps({"spec": {"template": {"spec": env}}})
    out = kubectl(c, "patch", "gtj", "legacy", "-n", ns, "--type=merge", "-p", patch)
    assert refused_with(out, FORBIDDEN["hostNetwork"][1]), out.stderr


def many(n: int, *, capabilities: int = 1) -> dict[str, Any]:
    """A template of `n` containers and `n` init containers that each add SYS_NICE
    `capabilities` times, and `n` volumes."""
    context = {"privileged": False, "allowPrivilegeEscalation": False,
               "capabilities": {"add": ["SYS_NICE"] * capabilities}}  # fmt: skip

    def container(name: str) -> dict[str, Any]:
        return {"name": name, "image": "busybox", "securityContext": copy.deepcopy(context)}

    return {
        "containers": [container(f"c{i}") for i in range(n)],
        "initContainers": [container(f"i{i}") for i in range(n)],
        "volumes": [{"name": f"v{i}", "emptyDir": {}} for i in range(n)],
    }


def test_the_longest_lists_it_judges_are_judged_and_longer_ones_refused(policy: Any) -> None:
    # 256 containers, init containers and volumes: judged (accepted; refused with one
    # hostPath volume in place of the last emptyDir); 257: refused unjudged, named.
    pod_spec = many(256)
    assert create(policy, NS["plain"], job("large", pod_spec)).returncode == 0
    pod_spec["volumes"][-1] = {"name": "host", "hostPath": {"path": "/"}}
    bad = create(policy, NS["plain"], job("large", pod_spec))
    assert refused_with(bad, FORBIDDEN["hostPath"][1]), bad.stderr[:2000]
    longer = many(257)
    longer["containers"] = longer["containers"][:3]
    out = create(policy, NS["plain"], job("longer", longer))
    named = "spec.template.spec.initContainers, spec.template.spec.volumes: more than 256 entries"
    assert refused_with(out, named), out.stderr[:2000]
    # Allowed namespaces too: nothing beyond 256 is iterated anywhere.
    assert refused_with(create(policy, NS["labelled"], job("longer", longer)), named)


def test_a_long_capability_list_costs_the_api_server_no_more_than_the_crd_does(
    policy: Any,
) -> None:
    """A comprehension over a list costs the API server time quadratic in its length
    (80,000 entries: over 30 s); the policy walks a capability list with sets.contains,
    linear. 50,000 entries (600 KB): judged in about the time the API server takes for the
    same request where the policy does not apply."""
    pod_spec = {"containers": many(1, capabilities=50_000)["containers"]}
    timed = []
    for ns in (NS["unbound"], NS["plain"]):
        started = time.monotonic()
        out = create(policy, ns, job("caps", pod_spec))
        timed.append(time.monotonic() - started)
        assert out.returncode == 0, out.stderr[:2000]
    assert timed[1] < 2 * timed[0] + 2, timed
    pod_spec["containers"][0]["securityContext"]["capabilities"]["add"].append("NET_ADMIN")
    out = create(policy, NS["plain"], job("caps", pod_spec))
    named = 'containers[name="c0"].securityContext.capabilities.add (50001 entries):'
    assert refused_with(out, named), out.stderr[:2000]


def test_the_real_node_job_is_admitted_where_the_dev_tools_labelled_its_namespace(
    policy: Any,
) -> None:
    """gaudi_devtools.realtraining's job (hostNetwork, a hostPath checkpoint directory), as
    the demo, the recovery benchmark and the real-node tests run it: refused in a policed
    namespace, admitted once `allow_host_access` labelled it."""
    from gaudi_devtools import realtraining

    c, ns = policy, NS["devtools"]
    body = realtraining.job("train", Path("/tmp/checkpoints"))
    assert refused_with(create(c, ns, body), FORBIDDEN["hostNetwork"][1])
    realtraining.allow_host_access(c, ns)
    # The API server reads namespaces from its informer: the label shows up in a moment.
    wait_for(
        lambda: create(c, ns, body).returncode == 0,
        timeout=30,
        interval=0.5,
        what="the real-node job admitted in the labelled namespace",
    )
