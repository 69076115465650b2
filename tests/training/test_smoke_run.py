"""`gaudi3-train --smoke`, the hardware acceptance run's worker (examples/gaudi-smoke.yaml),
on CPU with gloo: the real launcher, torchrun and two worker processes check an all-reduce
and train a few steps, and print the lines docs/gaudi.md says a healthy run prints. A
wrong sum on one rank fails every rank. HCCL, the Gaudi links and their speed are only
checked by running it on Gaudi hardware."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gaudi_train import smoke
from gaudi_train.device import select_device
from training.conftest import Run

pytestmark = pytest.mark.training

MODEL = ("--d-model", "32", "--n-heads", "2", "--n-layers", "1", "--seq-len", "16")
ALL_REDUCE_OK = re.compile(
    r"\[rank 0\] gaudi_train\.smoke INFO: all-reduce ok: 2 ranks \(gloo on cpu\), 2 MiB "
    r"float32, 3 timed: mean [0-9.]+ ms, best [0-9.]+ ms, algbw [0-9.]+ GB/s, "
    r"busbw [0-9.]+ GB/s"
)
PASSED = re.compile(
    r"\[rank 0\] gaudi_train\.smoke INFO: smoke test passed: 2 ranks on cpu, all-reduce "
    r"checked, 4 training steps, last loss [0-9.]+"
)


def test_smoke_run_checks_an_all_reduce_then_trains(
    launch: Callable[..., Run], tmp_path: Path
) -> None:
    run = launch(
        "--smoke", "--nproc", "2", "--max-restarts", "0", "--no-metrics",
        "--checkpoint-dir", str(tmp_path / "ckpt"), "--global-batch", "8", "--micro-batch", "2",
        "--allreduce-mib", "2", "--allreduce-runs", "3", *MODEL, "--max-steps", "4",
        "--log-every", "1",
    )  # fmt: skip
    assert run.wait() == 0, run.tail()
    text = run.text()
    assert ALL_REDUCE_OK.search(text), run.tail()
    assert [s for s, _ in run.steps()] == [1, 2, 3, 4]
    assert PASSED.search(text), run.tail()
    # The all-reduce comes first, the verdict last; a real job's checkpoint was written.
    assert text.index("all-reduce ok") < text.index("step 1 loss") < text.index("smoke test")
    assert any((tmp_path / "ckpt").iterdir())


def test_smoke_flags_that_do_not_go_together_exit_2(launch: Callable[..., Run]) -> None:
    for args in (("--smoke", "--benchmark"), ("--smoke", "--allreduce-runs", "0")):
        run = launch(*args)
        assert run.wait(60) == 2, run.tail()


def _rank(rank: int, world: int, init: str, corrupt_rank: int, out: Any) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    real = dist.all_reduce
    calls = []

    def all_reduce(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        result = real(tensor, *args, **kwargs)
        calls.append(1)
        if rank == corrupt_rank and len(calls) == 1:
            tensor[:3] += 1  # a bad link: three elements of this rank's sum are off
        return result

    dist.all_reduce = all_reduce  # type: ignore[assignment]
    session = SimpleNamespace(
        device=select_device("cpu"), world_size=world, rank=SimpleNamespace(rank=rank)
    )
    report = smoke.check_all_reduce(session, mib=1, timed=2)  # type: ignore[arg-type]
    out.put((rank, report.wrong, len(report.seconds)))
    dist.destroy_process_group()


@pytest.mark.parametrize(("corrupt", "wrong"), [(-1, 0), (1, 3)])
def test_a_wrong_sum_on_one_rank_is_seen_by_every_rank(
    tmp_path: Path, corrupt: int, wrong: int
) -> None:
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    init = f"file://{tmp_path / 'store'}"
    procs = [ctx.Process(target=_rank, args=(r, 2, init, corrupt, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    got = sorted(out.get() for _ in procs)
    assert got == [(0, wrong, 2), (1, wrong, 2)]


def test_bandwidths_and_the_report_line() -> None:
    assert smoke.expected_sum(16) == 136
    algbw, busbw = smoke.bandwidths(64 * 2**20, 0.01, 16)
    assert algbw == pytest.approx(6.7108864e9) and busbw == pytest.approx(algbw * 30 / 16)
    assert smoke.bandwidths(10, 1.0, 2) == (10.0, 10.0)  # two ranks: bus = algorithm
    bad = smoke.AllReduceReport(16, 64 * 2**20, 5, [0.01])
    assert bad.summary("hccl", "hpu") == (
        "all-reduce WRONG: 16 ranks (hccl on hpu), 64 MiB float32: 5 elements differ from 136"
    )
    ok = smoke.AllReduceReport(16, 64 * 2**20, 0, [0.02, 0.01])
    assert ok.summary("hccl", "hpu") == (
        "all-reduce ok: 16 ranks (hccl on hpu), 64 MiB float32, 2 timed: mean 15.000 ms, "
        "best 10.000 ms, algbw 6.711 GB/s, busbw 12.583 GB/s"
    )
