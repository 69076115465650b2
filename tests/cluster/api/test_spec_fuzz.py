"""Property-based fuzz of job specs: specs generated from the CRD's own schema, with a pod
`template` overlay and `resources` drawn from the fields users set, kept when the real API
server admits them (server-side dry run: schema, defaults, CEL rules, admission policies),
then run through the operator's controller and reconciler, passes and all, against the
in-memory API server of tests/unit/fake_api.py, while workers start, fail and the pod
watch lags. Every worker pod the reconciler POSTs gets the real API server's verdict
(accepted, 422, 403, 400) from a dry run of that pod (once per pod shape: the workers of
one spec differ only in name, index and generation), and the fake returns it: the
reconciler meets the real server's answer to what it built from the template.

The operator never crashes on a spec the CRD admits (no pass raises), never POSTs a worker
twice, never counts more restarts than failures, and every spec it cannot run gets an
InvalidSpec condition naming the field.

Seeded (GAUDI3_FUZZ_SEED, printed), so a failure reproduces."""

from __future__ import annotations

import copy
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from cluster.gtj import CRD, GROUP, PLURAL, VERSION
from gaudi_operator import api
from gaudi_operator.jobs.observation import JobView, WorkerPod
from gaudi_operator.jobs.plan import plan
from unit.fake_api import api_error
from unit.fake_world import World, running

pytestmark = pytest.mark.cluster

SEED = int(os.environ.get("GAUDI3_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
EXAMPLES = int(os.environ.get("GAUDI3_FUZZ_EXAMPLES", "100"))
# Drawn by the strategies below, not from the schema: the template's schema is Kubernetes'
# whole PodTemplateSpec (hypothesis-jsonschema would spend the run on fields no one sets),
# and resources are free-form maps whose values only a pod's validation judges.
SKIP = {"template", "resources"}


def json_schema(node: Any) -> Any:
    """The CRD's OpenAPI schema as plain JSON Schema (Kubernetes' x- keys dropped)."""
    if isinstance(node, dict):
        out = {k: json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
        if node.get("x-kubernetes-int-or-string"):
            out["type"] = ["integer", "string"]
        return out
    if isinstance(node, list):
        return [json_schema(v) for v in node]
    return node


def spec_schema() -> dict[str, Any]:
    crd = next(
        d
        for d in yaml.safe_load_all(CRD.read_text())
        if d and d.get("kind") == "CustomResourceDefinition"
    )
    version = next(v for v in crd["spec"]["versions"] if v["name"] == VERSION)
    spec = json_schema(version["schema"]["openAPIV3Schema"]["properties"]["spec"])
    for name in SKIP:
        spec["properties"].pop(name, None)
    spec["additionalProperties"] = False
    return spec


SPECS = from_schema(spec_schema())

# --- template and resources: what users write there, right and wrong ----------------------

NAMES = st.sampled_from(["data", "cache", "scratch", "Bad_Name", "x" * 70, "worker"])
LABEL_KEYS = st.sampled_from(
    ["team", "example.com/tier", "gaudi.scalestarter.dev/job-name", "bad key", "app"]
)
LABEL_VALUES = st.sampled_from(["a", "ml", "", "not valid!", "v" * 64])
QUANTITIES = st.one_of(
    st.sampled_from(["500m", "1", "2", "2Gi", "100Mi", "3624Mi", "0", "1e3", "0.5"]),
    st.sampled_from(["abc", "-1", "1.5.2", "", "2GB", "Gi"]),
    st.integers(min_value=-2, max_value=64),
)
RESOURCE_NAMES = st.sampled_from(
    ["cpu", "memory", "hugepages-2Mi", "ephemeral-storage", "example.com/nic", "habana.ai/gaudi"]
)
RESOURCE_MAP = st.dictionaries(RESOURCE_NAMES, QUANTITIES, max_size=3)
RESOURCES = st.fixed_dictionaries({}, optional={"requests": RESOURCE_MAP, "limits": RESOURCE_MAP})

ENV = st.fixed_dictionaries(
    {"name": st.sampled_from(["MY_VAR", "PET_NNODES", "GAUDI3_JOB_NAME", "1BAD", "LOG_LEVEL"])},
    optional={"value": st.sampled_from(["1", "", "debug"])},
)
VOLUME = st.builds(
    lambda name, kind: {"name": name, **kind},
    NAMES,
    st.sampled_from(
        [
            {"emptyDir": {}},
            {"emptyDir": {"medium": "Memory"}},
            {"configMap": {"name": "settings"}},
            {"persistentVolumeClaim": {"claimName": "ckpt"}},
        ]
    ),
)
MOUNT = st.fixed_dictionaries(
    {"name": NAMES, "mountPath": st.sampled_from(["/data", "/checkpoints", "relative", "/"])}
)
WORKER = st.fixed_dictionaries(
    {"name": st.just(api.WORKER_CONTAINER)},
    optional={
        "env": st.lists(ENV, max_size=3),
        "volumeMounts": st.lists(MOUNT, max_size=2),
        "resources": RESOURCES,
        "imagePullPolicy": st.sampled_from(["Always", "IfNotPresent", "Never"]),
        "workingDir": st.sampled_from(["/work", "work"]),
    },
)
SIDECAR = st.fixed_dictionaries(
    {"name": st.sampled_from(["sidecar", "worker", "Bad_Side"]), "image": st.just("busybox")},
    optional={"resources": RESOURCES},
)
TOLERATION = st.fixed_dictionaries(
    {},
    optional={
        "key": st.sampled_from(["dedicated", "habana.ai/gaudi", "bad key"]),
        "operator": st.sampled_from(["Exists", "Equal"]),
        "value": st.sampled_from(["ml", ""]),
        "effect": st.sampled_from(["NoSchedule", "NoExecute", "PreferNoSchedule"]),
    },
)
AFFINITY = st.just(
    {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            }
        }
    }
)
POD_SPEC = st.fixed_dictionaries(
    {},
    optional={
        "containers": st.lists(st.one_of(WORKER, SIDECAR), max_size=2),
        "initContainers": st.lists(SIDECAR, max_size=1),
        "volumes": st.lists(VOLUME, max_size=2),
        "nodeSelector": st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=2),
        "tolerations": st.lists(TOLERATION, max_size=2),
        "affinity": AFFINITY,
        "serviceAccountName": st.sampled_from(["default", "Bad_SA"]),
        "priorityClassName": st.sampled_from(["", "high"]),
        "securityContext": st.fixed_dictionaries({}, optional={"runAsUser": st.integers(-1, 2)}),
        "terminationGracePeriodSeconds": st.integers(-1, 60),
        "hostNetwork": st.booleans(),
    },
)
TEMPLATE = st.fixed_dictionaries(
    {},
    optional={
        "metadata": st.fixed_dictionaries(
            {},
            optional={
                "labels": st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=2),
                "annotations": st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=2),
            },
        ),
        "spec": POD_SPEC,
    },
)
# What happens between two passes: the watches catch up or lag, workers start or fail.
STEPS = st.lists(
    st.sampled_from(["pass", "lag", "run", "fail", "later", "conflict"]), min_size=3, max_size=10
)


def with_overlays(spec: dict[str, Any], template: Any, resources: Any) -> dict[str, Any]:
    spec = dict(spec)
    if template is not None:
        spec["template"] = template
    if resources is not None:
        spec["resources"] = resources
    return spec


def admitted(custom: Any, namespace: str, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The object as the API server would store it (defaults applied), or None if refused."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GaudiTrainingJob",
            "metadata": {"name": "fuzz", "namespace": namespace}, "spec": spec}  # fmt: skip
    try:
        return custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, dry_run="All"
        )
    except Exception as err:
        # 400/422: schema or CEL; 403: an admission policy (the chart's tenant policy).
        if getattr(err, "status", None) in (400, 403, 422):
            return None
        raise


PER_WORKER_ENV = {"GAUDI3_WORKER_INDEX", "GAUDI3_GENERATION", "PET_RDZV_ID", "GAUDI3_WORLD_PODS"}


def shape(pod: dict[str, Any]) -> str:
    """The pod without what differs from worker to worker of one spec (name, index,
    generation): pods of the same shape get the same verdict, asked once."""
    pod = copy.deepcopy(pod)
    meta = pod.get("metadata") or {}
    meta.pop("name", None)
    for label in (api.LABEL_WORKER_INDEX, api.LABEL_GENERATION):
        (meta.get("labels") or {}).pop(label, None)
    spec = pod.get("spec") or {}
    spec.pop("hostname", None)
    for c in spec.get("containers") or []:
        c["env"] = [e for e in c.get("env") or [] if e.get("name") not in PER_WORKER_ENV]
    return json.dumps(pod, sort_keys=True, default=str)


class RealPodValidation:
    """The fake's fault hook: each worker pod POSTed is dry-run on the real API server
    first, and the server's refusal, if any, is what the reconciler gets."""

    def __init__(self, core: Any, namespace: str) -> None:
        self.core, self.namespace = core, namespace
        self.answers: Counter[int] = Counter()
        self.messages: dict[int, str] = {}
        self.verdicts: dict[str, tuple[int, str]] = {}  # by the pod's shape (see shape())

    def __call__(self, verb: str, resource: str, body: Mapping[str, Any]) -> Any:
        if verb != "POST" or resource != "pods":
            return None
        pod = copy.deepcopy(dict(body))
        pod.setdefault("metadata", {}).pop("ownerReferences", None)  # no such job there
        key = shape(pod)
        if key not in self.verdicts:
            # The raw request, as the operator sends it: the generated create_namespaced_pod
            # validates its argument first and refuses quantities given as numbers.
            self.verdicts[key] = self.dry_run(pod)
        code, message = self.verdicts[key]
        if code >= 300:
            self.answers[code] += 1
            self.messages[code] = message
            return api_error(code, message)
        self.answers[200] += 1
        return None

    def dry_run(self, pod: dict[str, Any]) -> tuple[int, str]:
        from kubernetes.client.exceptions import ApiException

        client = self.core.api_client
        method, url, headers, body, _ = client.param_serialize(
            "POST",
            "/api/v1/namespaces/{namespace}/pods",
            path_params={"namespace": self.namespace},
            query_params=[("dryRun", "All")],
            header_params={"Content-Type": "application/json", "Accept": "application/json"},
            body=pod,
            auth_settings=["BearerToken"],
        )
        try:
            response = client.call_api(method, url, header_params=headers, body=body)
            response.read()
            status, data = response.status, response.data
        except ApiException as err:
            status, data = err.status, err.body
        message = ""
        if status >= 300:
            try:
                message = json.loads(data or b"{}").get("message", "")
            except ValueError:
                message = str(data)
        return status, message


def fail_one(w: World, rng: random.Random) -> bool:
    """One running worker exits non-zero; False when none runs."""
    pods = [p for p in w.api.pods(w.ns) if p["status"].get("phase") == "Running"]
    if not pods:
        return False
    pod = rng.choice(pods)
    pod["status"]["phase"] = "Failed"
    pod["status"]["containerStatuses"] = [
        {
            "name": api.WORKER_CONTAINER,
            "state": {"terminated": {"exitCode": rng.choice([1, 2, 137]), "reason": "Error"}},
        }
    ]
    pod["metadata"]["resourceVersion"] = str(int(pod["metadata"]["resourceVersion"]) + 1)
    return True


class Errors(logging.Handler):
    """Records a pass that raised: the controller logs it and retries, it never crashes."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("gaudi_operator.runtime.controller"):
            self.records.append(self.format(record))


def conflict_next_status_write(w: World) -> None:
    armed = [True]
    hook = w.api.fault

    def fault(verb: str, resource: str, body: Mapping[str, Any]) -> Any:
        if armed[0] and verb == "PATCH" and resource.endswith("/status"):
            armed[0] = False
            job = w.api.get(PLURAL, w.ns, w.name)
            job["metadata"]["resourceVersion"] += "0"  # someone else wrote it meanwhile
            return api_error(409, "the object has been modified")
        return hook(verb, resource, body)

    w.api.fault = fault


def drive(w: World, steps: list[str], rng: random.Random) -> int:
    """Run the scenario; returns the failures injected."""
    failures = 0
    w.pass_()
    for step in steps:
        if step == "run":
            w.catch_up()
            w.each_pod(running)
        elif step == "fail":
            w.catch_up()
            failures += fail_one(w, rng)
        elif step == "later":
            w.clock.advance(rng.choice([1, 30, 400]))
        elif step == "conflict":
            conflict_next_status_write(w)
        if step != "lag":
            w.catch_up()
        w.pass_()
    w.catch_up()
    w.pass_()
    return failures


def test_every_admitted_spec_is_reconciled_or_named_as_invalid(
    custom: Any, core: Any, namespace: str, crd: Any
) -> None:
    print(f"spec fuzz: GAUDI3_FUZZ_SEED={SEED} examples={EXAMPLES}")
    # HPU workers need hostIPC and SYS_NICE (Intel's pod contract): a namespace that lets
    # them run, so that the pod dry runs judge the template, not Pod Security.
    core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}
    )
    seen: Counter[str] = Counter()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    validation = RealPodValidation(core, namespace)
    errors = Errors()
    logging.getLogger("gaudi_operator.runtime.controller").addHandler(errors)

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        spec=SPECS,
        template=st.none() | TEMPLATE,
        resources=st.none() | RESOURCES,
        workers=st.integers(min_value=0, max_value=3),
        steps=STEPS,
        salt=st.integers(0, 2**16),
    )
    def check(
        spec: dict[str, Any],
        template: Any,
        resources: Any,
        workers: int,
        steps: list[str],
        salt: int,
    ) -> None:
        obj = admitted(custom, namespace, with_overlays(spec, template, resources))
        if obj is None:
            seen["refused"] += 1
            return
        seen["admitted"] += 1
        seen["with template"] += "template" in obj["spec"]
        seen["with resources"] += "resources" in obj["spec"]

        # The pure plan, on workers the job might already have.
        obj["metadata"].update(uid="u-1", generation=1)
        pods = [
            WorkerPod(
                f"fuzz-worker-{i}",
                f"p{i}",
                owner_uid="u-1",
                index=i,
                generation=0,
                phase="Running",
                node="n0",
            )
            for i in range(workers)
        ]
        p = plan(JobView.from_body(obj), pods, now)  # must not raise
        invalid = next((c for c in p.status.conditions if c.type == "InvalidSpec"), None)
        if invalid is not None and invalid.status == "True":
            seen["invalid"] += 1
            assert "spec." in invalid.message, invalid.message
            assert p.create == [] and p.delete == []  # nothing touched for a bad spec
        else:
            assert p.spec is not None

        # The same spec through the controller and reconciler, on the fake API server.
        w = World("fuzz", obj["spec"], namespace=namespace)
        posted: Counter[str] = Counter()
        accepted: Counter[str] = Counter()

        def count_posts(verb: str, resource: str, body: Mapping[str, Any]) -> Any:
            if verb == "POST" and resource == "pods":
                name = body["metadata"]["name"]
                exists = ("pods", w.ns, name) in w.api.objects
                assert not exists, f"{name} POSTed while it exists"
                posted[name] += 1
            err = validation(verb, resource, body)
            if verb == "POST" and resource == "pods" and err is None:
                accepted[body["metadata"]["name"]] += 1
            return err

        w.api.fault = count_posts
        before = len(errors.records)
        try:
            failures = drive(w, steps, random.Random(salt))
        finally:
            w.forget()
        assert errors.records[before:] == [], "\n".join(errors.records[before:])
        job = w.job
        status = job.get("status") or {}
        assert status.get("restarts", 0) <= failures, (status.get("restarts"), failures)
        for pod in w.api.pods(w.ns):
            refs = pod["metadata"].get("ownerReferences") or []
            assert [r["uid"] for r in refs if r.get("controller")] == [job["metadata"]["uid"]]
        conds = {c["type"]: c for c in status.get("conditions") or []}
        bad = conds.get("InvalidSpec")
        if bad is not None and bad["status"] == "True":
            seen[f"InvalidSpec/{bad['reason']}"] += 1
            assert "spec." in bad["message"], bad["message"]
        elif posted and not accepted:
            # Every worker POST refused, and not for the spec: a quota or policy (403).
            # (Pods taken and later deleted, by a deadline or a restart, are not this.)
            created = conds.get("Created") or {}
            assert created.get("status") == "False", (validation.messages, conds)
        seen["phase " + str(status.get("phase"))] += 1

    try:
        check()
    finally:
        logging.getLogger("gaudi_operator.runtime.controller").removeHandler(errors)
    print(
        f"spec fuzz: {dict(seen)}; worker POSTs answered {dict(validation.answers)} "
        f"({len(validation.verdicts)} dry runs)"
    )
    for code, message in sorted(validation.messages.items()):
        print(f"spec fuzz: a pod refused with {code}: {message[:300]}")
    assert seen["admitted"] > EXAMPLES // 10, f"too few admitted specs to mean much: {seen}"
    assert seen["with template"] and seen["with resources"], seen
    # Both paths ran: pods the API server took, and pods it refused as invalid (422, or
    # 400 for a quantity it cannot decode; both are PodRejected). A random seed may draw
    # only one of the two refusals.
    refused = validation.answers[422] + validation.answers[400]
    assert validation.answers[200] and refused, validation.answers
