"""The operator's environment becomes the right torchrun command line and worker settings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gaudi_train.cli import split_script
from gaudi_train.env import ElasticSettings, EnvError, JobSettings, RankInfo
from gaudi_train.launcher import LaunchRequest, check_batch, failure_exit_code, torchrun_argv

pytestmark = pytest.mark.unit

POD_ENV = {
    "PET_NNODES": "2:4",
    "PET_NPROC_PER_NODE": "8",
    "PET_RDZV_BACKEND": "c10d",
    "PET_RDZV_ENDPOINT": "llm-worker-0.llm.team-a.svc:29400",
    "PET_RDZV_ID": "0b7c-3",
    "PET_MAX_RESTARTS": "3",
    "MASTER_ADDR": "llm-worker-0.llm.team-a.svc",
    "MASTER_PORT": "29500",
    "GAUDI3_JOB_NAME": "llm",
    "GAUDI3_NAMESPACE": "team-a",
    "GAUDI3_WORKER_INDEX": "1",
    "GAUDI3_GENERATION": "3",
    "GAUDI3_CHECKPOINT_DIR": "/checkpoints",
    "GAUDI3_CHECKPOINT_INTERVAL": "500",
    "GAUDI3_GLOBAL_BATCH_SIZE": "1024",
    "GAUDI3_MICRO_BATCH_SIZE": "8",
    "GAUDI3_METRICS_PORT": "9400",
}


def test_pod_environment_becomes_an_elastic_torchrun_command() -> None:
    elastic = ElasticSettings.from_env(POD_ENV)
    request = LaunchRequest(JobSettings.from_env(POD_ENV), elastic, ["--module", "m"])
    argv = torchrun_argv(request, nproc=8)
    assert argv == [
        "--nproc-per-node", "8", "--max-restarts", "3",
        "--nnodes", "2:4", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", "llm-worker-0.llm.team-a.svc:29400", "--rdzv-id", "0b7c-3",
        "--module", "m",
    ]  # fmt: skip
    assert elastic.node_range() == (2, 4)


def test_without_a_rendezvous_endpoint_the_launcher_runs_standalone() -> None:
    request = LaunchRequest(JobSettings(), ElasticSettings.from_env({}), ["train.py", "--x"])
    argv = torchrun_argv(request, nproc=2)
    assert "--standalone" in argv and argv[-2:] == ["train.py", "--x"]


def test_job_settings_read_the_operator_contract_and_round_trip() -> None:
    settings = JobSettings.from_env(POD_ENV)
    assert settings.checkpoint_dir == "/checkpoints"
    assert settings.checkpoint_interval == 500
    assert (settings.global_batch, settings.micro_batch) == (1024, 8)
    assert (settings.job_name, settings.namespace, settings.generation) == ("llm", "team-a", 3)
    assert settings.metrics_port == 9400
    assert JobSettings.from_env(settings.to_env()) == settings


def test_rank_info_comes_from_torchrun_variables() -> None:
    env = {"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}
    env |= {"GROUP_RANK": "1", "TORCHELASTIC_RESTART_COUNT": "2", "GAUDI3_JOB_NAME": "llm"}
    info = RankInfo.from_env(env)
    assert (info.rank, info.local_rank, info.world_size, info.node_rank) == (9, 1, 16, 1)
    assert info.restart_count == 2 and info.job_name == "llm" and not info.is_main


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PET_NNODES", "4:2", "PET_NNODES='4:2'"),
        ("GAUDI3_CHECKPOINT_INTERVAL", "often", "GAUDI3_CHECKPOINT_INTERVAL='often'"),
        ("GAUDI3_DEVICE", "tpu", "use auto, hpu, cuda or cpu"),
        ("GAUDI3_WORLD_PODS", "0", "GAUDI3_WORLD_PODS=0"),
        ("GAUDI3_WORLD_PODS", "two", "GAUDI3_WORLD_PODS='two'"),
    ],
)
def test_bad_variables_are_named_in_the_error(name: str, value: str, message: str) -> None:
    with pytest.raises(EnvError, match=message.replace("(", r"\(")):
        JobSettings.from_env({name: value})
        ElasticSettings.from_env({name: value})


def test_batch_check_accepts_a_range_with_some_valid_world_size() -> None:
    settings = JobSettings(global_batch=1024, micro_batch=8)
    assert check_batch(settings, ElasticSettings(nnodes="2:4"), 8) is None


def test_batch_check_refuses_a_range_without_any_valid_world_size() -> None:
    settings = JobSettings(global_batch=96, micro_batch=4)
    problem = check_batch(settings, ElasticSettings(nnodes="5:7"), 8)
    assert problem is not None
    assert "Valid world sizes: 1, 2, 3, 4, 6, 8, 12, 24" in problem
    assert "valid pod counts at 8 processes per pod: 1, 3" in problem


def test_failures_keep_the_exit_codes_the_operator_acts_on() -> None:
    assert failure_exit_code([1, 2]) == 2  # configuration error: do not retry
    assert failure_exit_code([75, -9]) == 75
    assert failure_exit_code([-9]) == 1


def test_script_arguments_are_passed_through() -> None:
    own, script = split_script(["--nproc", "2", "--script", "t.py", "--lr", "1"])
    assert own == ["--nproc", "2"] and script == ["t.py", "--lr", "1"]
    assert split_script(["--nproc", "2"]) == (["--nproc", "2"], None)


FORBIDDEN = {"gaudi_operator", "kopf", "typer", "kubernetes", "kubernetes_asyncio", "pydantic"}


def test_launcher_never_imports_operator_dependencies() -> None:
    package = Path(__file__).resolve().parents[2] / "training-image" / "gaudi_train"
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{source.name} imports {name}"
