"""The example GaudiTrainingJobs for users' own scripts are valid and run what they name."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gaudi_operator.api import GaudiTrainingJobSpec
from gaudi_train.batching import valid_replica_counts
from gaudi_train.cli import build_parser, split_script
from training.frameworks import EXAMPLES

pytestmark = pytest.mark.unit

MANIFESTS = Path(__file__).resolve().parents[2] / "examples"
CASES = [
    ("torch-script.yaml", "regression.py"),
    ("lightning-script.yaml", "lightning_regression.py"),
    ("hf-trainer-script.yaml", "hf_trainer_tiny.py"),
]


def job(name: str) -> tuple[dict[str, Any], str]:
    text = (MANIFESTS / name).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    jobs = [d for d in docs if d["kind"] == "GaudiTrainingJob"]
    assert len(jobs) == 1
    return jobs[0], text


@pytest.mark.parametrize(("manifest", "script"), CASES)
def test_script_job_mounts_the_example_from_the_configmap_its_comment_creates(
    manifest: str, script: str
) -> None:
    body, text = job(manifest)
    spec = GaudiTrainingJobSpec.model_validate(body["spec"])
    launcher_args, script_argv = split_script(list(spec.args))
    build_parser().parse_args(launcher_args)  # the launcher accepts its part
    assert script_argv is not None, "runs a user script"
    path = Path(script_argv[0])
    assert path.name == script and (EXAMPLES / script).is_file()

    created = re.search(
        rf"kubectl create configmap (\S+) --from-file=training-image/examples/{script}\n", text
    )
    assert created, "the header says how to create the ConfigMap"
    pod = spec.template["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = [
        m
        for c in pod["containers"]
        if c["name"] == "worker"
        for m in c["volumeMounts"]
        if m["mountPath"] == str(path.parent)
    ]
    assert len(mounts) == 1
    assert volumes[mounts[0]["name"]]["configMap"]["name"] == created.group(1)


@pytest.mark.parametrize(("manifest", "script"), CASES[1:])
def test_framework_job_args_and_batch_fit_the_script_and_every_world_size(
    manifest: str, script: str
) -> None:
    spec = GaudiTrainingJobSpec.model_validate(job(manifest)[0]["spec"])
    _, script_argv = split_script(list(spec.args))
    assert script_argv is not None
    loaded = importlib.util.spec_from_file_location(script[:-3], EXAMPLES / script)
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    assert module.parse_args(script_argv[1:]).max_steps > 0

    # The scripts keep the global batch by accumulation and exit 2 on a world size that
    # cannot split it: the job's start, smallest and largest sizes must all split it.
    batch, workers = spec.batch, spec.workers
    assert batch is not None
    counts = valid_replica_counts(
        batch.global_batch_size,
        batch.micro_batch_size,
        spec.hpus_per_worker,
        workers.min,
        workers.max,
    )
    assert {workers.min, workers.replicas, workers.max} <= set(counts), counts
    # Several pods share the checkpoint: a claim, not the per-pod emptyDir default.
    assert spec.checkpoint.volume_claim_name
    assert spec.failure_policy.stall_timeout_seconds == 0, "no step metric to watch"
