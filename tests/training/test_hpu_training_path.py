"""The HPU training path end to end, against the fake habana_frameworks (no Gaudi here).

The real launcher runs torchrun with two worker processes on the HPU branch
(`--device hpu`), the fake bridge on their PYTHONPATH so that `import torch` loads it as
in Intel's images, and tests/training/hpu_probe.py as the script: the built-in workload
with tensors on the CPU. The fake's log then shows, per process and in order, what the
Gaudi bridge would have been asked. What only hardware can show (that Intel's bridge
honours these calls, speed, HCCL over the scale-out network) is not tested here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from training.conftest import FAKE_HABANA, TRAINING_IMAGE, Run

pytestmark = pytest.mark.training

PROBE = str(Path(__file__).resolve().parent / "hpu_probe.py")
MODEL = ("--d-model", "32", "--n-heads", "2", "--n-layers", "1", "--seq-len", "16")
# global 8 = micro 2 x world 2 x accumulation 2: two backward passes per optimizer step.
BATCH = ("--global-batch", "8", "--micro-batch", "2")
ONE_STEP_LAZY = ["backward", "mark_step", "backward", "mark_step", "optimizer.step", "mark_step"]


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def by_pid(entries: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    found: dict[int, list[dict[str, Any]]] = {}
    for entry in entries:
        found.setdefault(entry["pid"], []).append(entry)
    return {pid: sorted(items, key=lambda e: e["seq"]) for pid, items in found.items()}


def workers(entries: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """rank -> that worker process's entries, in order."""
    ranks = {}
    for items in by_pid(entries).values():
        rank = {e["rank"] for e in items} - {None}
        if rank:
            ranks[int(rank.pop())] = items
    return ranks


def pid_state(pid: int) -> list[int]:
    """The fake HPU generator's state in a process that never set it."""
    return list(pid.to_bytes(8, "little")) * 2


@pytest.fixture
def hpu_run(launch: Callable[..., Run], job_env: Callable[..., dict[str, str]], tmp_path: Path):
    """`hpu_run(log, *flags, steps=N)`: the launcher on the fake HPU branch, 2 workers."""

    def run(log: Path, *flags: str, steps: int) -> Run:
        env = job_env(
            PYTHONPATH=f"{FAKE_HABANA}:{TRAINING_IMAGE}",
            FAKE_HABANA_LOG=str(log),
            GAUDI3_DEVICE="hpu",
            HABANA_LOGS=str(tmp_path / "habana_logs"),
        )
        args = ("--nproc", "2", "--max-restarts", "0", "--no-metrics")
        args += ("--checkpoint-dir", str(tmp_path / "ckpt"))
        args += ("--checkpoint-interval", "2", *BATCH, *flags)
        args += ("--script", PROBE, *MODEL, "--max-steps", str(steps), "--log-every", "1")
        return launch(*args, env=env)

    return run


def test_hpu_path_in_lazy_then_eager_with_compile_and_resume(hpu_run, tmp_path: Path) -> None:
    # -- lazy mode, 3 steps, checkpoints at steps 2 and 3 --------------------------------
    lazy_log = tmp_path / "lazy.jsonl"
    first = hpu_run(lazy_log, "--hpu-mode", "lazy", steps=3)
    assert first.wait(300) == 0, first.tail()
    entries = read_log(lazy_log)
    processes = by_pid(entries)
    ranks = workers(entries)
    assert sorted(ranks) == [0, 1], first.tail()
    # The launcher and both workers: PT_HPU_LAZY_MODE was set when the bridge loaded.
    assert first.proc.pid in processes
    for pid, items in processes.items():
        loaded = items[0]
        assert (loaded["event"], loaded["module"]) == ("import", "habana_frameworks"), pid
        assert loaded["env"]["PT_HPU_LAZY_MODE"] == "1", (pid, loaded)

    for rank, items in ranks.items():
        # hccl for the process group, Intel's DDP arguments (Model-References train.py).
        groups = [e for e in items if e["event"] == "process_group"]
        assert [(g["backend"], g["group_size"]) for g in groups] == [("hccl", 2)]
        (ddp,) = [e for e in items if e["event"] == "ddp"]
        assert ddp["bucket_bytes_cap"] == 256 * 1024 * 1024
        assert ddp["broadcast_buffers"] is False and ddp["gradient_as_bucket_view"] is True
        assert ddp["device_ids"] is None
        # Lazy mode: mark_step after every backward and after every optimizer.step.
        order = [e["event"] for e in items if e["event"] in ONE_STEP_LAZY]
        assert order == ONE_STEP_LAZY * 3, (rank, order)
        assert not [e for e in items if e["event"] == "compile"]
        # The HPU's RNG state goes into this rank's file of every checkpoint.
        saved = [e["state"] for e in items if e["event"] == "get_rng_state"]
        assert len(saved) == 2, rank  # step 2 and the final step 3
        rng = torch.load(tmp_path / "ckpt" / "step-00000003" / f"rng-rank{rank}.pt")
        assert rng["hpu"].tolist() == saved[-1]

    lazy_saved = {r: [e for e in items if e["event"] == "get_rng_state"][-1]["state"]
                  for r, items in ranks.items()}  # fmt: skip

    # -- eager mode with --compile, resumed from step 3 to 5 -----------------------------
    eager_log = tmp_path / "eager.jsonl"
    second = hpu_run(eager_log, "--hpu-mode", "eager", "--compile", steps=5)
    assert second.wait(300) == 0, second.tail()
    entries = read_log(eager_log)
    ranks = workers(entries)
    assert sorted(ranks) == [0, 1], second.tail()
    for pid, items in by_pid(entries).items():
        assert items[0]["module"] == "habana_frameworks"
        assert items[0]["env"]["PT_HPU_LAZY_MODE"] == "0", (pid, items[0])
    for rank, items in ranks.items():
        events = [e["event"] for e in items]
        assert "mark_step" not in events  # eager mode: no graph to flush
        compiles = [e for e in items if e["event"] == "compile"]
        assert compiles and {c["backend"] for c in compiles} == {"hpu_backend"}
        (wrapped,) = [e for e in items if e["event"] == "wrapped"]
        assert wrapped == {**wrapped, "compiled": True, "ddp": True}
        # Resumed with this rank's saved HPU RNG state, not the fresh process's own.
        restored = [e["state"] for e in items if e["event"] == "set_rng_state"]
        assert restored == [lazy_saved[rank]], rank
        assert restored[0] != pid_state(items[0]["pid"])
        # Steps 4 and 5 (before them, loading the optimizer through DCP's
        # set_state_dict makes one zero-gradient step of its own to create its state).
        assert events[events.index("backward") :].count("optimizer.step") == 2
    assert (tmp_path / "ckpt" / "step-00000005" / "COMPLETE.json").exists()


@pytest.mark.parametrize(
    ("flags", "extra", "message"),
    [
        (
            ("--hpu-mode", "lazy", "--compile"),
            {},
            "--compile (GAUDI3_COMPILE) needs eager mode",
        ),
        ((), {"HABANA_LOGS": "FILE"}, "is not writable for uid"),
        ((), {"PT_HPU_LAZY_MODE": "2"}, "PT_HPU_LAZY_MODE='2': use 0 (eager"),
    ],
    ids=["compile-in-lazy-mode", "habana-logs-not-writable", "bad-lazy-mode-value"],
)
def test_settings_the_hpu_path_cannot_run_are_refused_before_torch_starts(
    launch, job_env, tmp_path: Path, flags: tuple[str, ...], extra: dict[str, str], message: str
) -> None:
    log = tmp_path / "fake.jsonl"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    extra = {k: str(blocker) if v == "FILE" else v for k, v in extra.items()}
    env = job_env(
        PYTHONPATH=f"{FAKE_HABANA}:{TRAINING_IMAGE}",
        FAKE_HABANA_LOG=str(log),
        GAUDI3_DEVICE="hpu",
        **extra,
    )
    run = launch("--nproc", "1", "--no-metrics", *flags, env=env)
    assert run.wait(120) == 2, run.tail()  # a configuration error: retrying cannot help
    assert message in run.text()
    assert read_log(log) == []  # refused before anything loaded the bridge
