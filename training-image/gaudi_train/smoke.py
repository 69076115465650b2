"""The hardware acceptance run's worker (`gaudi3-train --smoke`; examples/gaudi-smoke.yaml,
docs/gaudi.md "Hardware acceptance run").

Each worker process joins the job's world as any worker does, then:

1. all-reduce: every rank contributes a buffer filled with rank + 1, and every element of
   the sum must be world * (world + 1) / 2 on every rank; then the same all-reduce is timed
   (the slowest rank's time counts) and reported as algorithm bandwidth (bytes / time) and
   bus bandwidth (algorithm bandwidth * 2 (n - 1) / n, the ring all-reduce's traffic per
   rank, as nccl-tests' doc/PERFORMANCE.md defines it; Intel's hccl_demo reports the same
   pair as "Algo Bandwidth" and "NW Bandwidth");
2. training: the built-in reference workload for `--max-steps` steps (DDP, checkpoints,
   metrics, as a real job).

On Gaudi the collective is HCCL over the cards' scale-up links within a node and the
scale-out NICs across nodes; on CPU it is gloo. A wrong sum exits 1 on every rank before
training starts.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gaudi_train.batching import BatchConfigError
from gaudi_train.env import EXIT_CONFIG_ERROR, RankInfo
from gaudi_train.worker import setup_logging

if TYPE_CHECKING:
    from gaudi_train.session import Session

log = logging.getLogger("gaudi_train.smoke")

EXIT_ALL_REDUCE_WRONG = 1
FLOAT32_BYTES = 4


def expected_sum(world: int) -> int:
    """What every element sums to when rank r contributes r + 1."""
    return world * (world + 1) // 2


def bandwidths(nbytes: int, seconds: float, world: int) -> tuple[float, float]:
    """(algorithm, bus) bandwidth in bytes/s of one all-reduce of `nbytes` per rank."""
    algorithm = nbytes / seconds
    return algorithm, algorithm * 2 * (world - 1) / world


@dataclass(frozen=True)
class AllReduceReport:
    world: int
    nbytes: int
    wrong: int  # elements that differ from the expected sum, over all ranks
    seconds: list[float]  # per timed run, the slowest rank's

    def summary(self, backend: str, device: str) -> str:
        mib = self.nbytes / 2**20
        head = f"{self.world} ranks ({backend} on {device}), {mib:g} MiB float32"
        if self.wrong:
            return (
                f"all-reduce WRONG: {head}: {self.wrong} elements differ from "
                f"{expected_sum(self.world)}"
            )
        mean = statistics.fmean(self.seconds)
        algorithm, bus = bandwidths(self.nbytes, min(self.seconds), self.world)
        return (
            f"all-reduce ok: {head}, {len(self.seconds)} timed: mean {mean * 1e3:.3f} ms, "
            f"best {min(self.seconds) * 1e3:.3f} ms, algbw {algorithm / 1e9:.3f} GB/s, "
            f"busbw {bus / 1e9:.3f} GB/s"
        )


def check_all_reduce(session: Session, mib: int, timed: int) -> AllReduceReport:
    """Check one all-reduce's result on every rank, then time `timed` more."""
    import torch
    import torch.distributed as dist

    device = session.device
    target = torch.device(device.device)
    world, rank = session.world_size, session.rank.rank
    elements = mib * 2**20 // FLOAT32_BYTES
    want = float(expected_sum(world))
    buf = torch.full((elements,), float(rank + 1), dtype=torch.float32, device=target)
    dist.all_reduce(buf)
    device.mark_step()  # lazy mode: run the graph before reading it
    wrong = int((buf != want).sum().item())
    seconds = []
    for _ in range(timed):
        buf.fill_(float(rank + 1))
        dist.barrier()
        started = time.perf_counter()
        dist.all_reduce(buf)
        device.mark_step()
        float(buf[0].item())  # waits for the collective: the device works asynchronously
        seconds.append(time.perf_counter() - started)
    # Every rank learns the verdict (and the slowest rank's times), so all exit alike.
    agreed = torch.tensor([float(wrong), *seconds], dtype=torch.float64)
    if device.backend != "gloo":
        agreed = agreed.to(torch.float32).to(device.torch_device())
    wrong_sum = agreed[:1].clone()
    dist.all_reduce(wrong_sum)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    device.mark_step()
    slowest = [float(s) for s in agreed[1:].cpu()]
    return AllReduceReport(world, elements * FLOAT32_BYTES, int(wrong_sum.cpu()[0]), slowest)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from gaudi_train.workload import WorkloadConfig

    parser = argparse.ArgumentParser(prog="gaudi_train.smoke")
    WorkloadConfig.add_arguments(parser)
    parser.add_argument("--allreduce-mib", type=int, default=64)
    parser.add_argument("--allreduce-runs", type=int, default=5)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    rank = RankInfo.from_env()
    setup_logging(rank)
    args = parse_args(argv)
    from gaudi_train.session import Session
    from gaudi_train.workload import WorkloadConfig, train

    cfg = WorkloadConfig.from_namespace(args)
    try:
        session = Session(seed=cfg.seed)
    except BatchConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG_ERROR
    device = session.device
    if session.world_size > 1:
        report = check_all_reduce(session, args.allreduce_mib, args.allreduce_runs)
        line = report.summary(device.backend, device.device)
        if report.wrong:
            log.error("%s", line)
            return EXIT_ALL_REDUCE_WRONG
        if session.is_main:
            log.info("%s", line)
    elif session.is_main:
        log.info("all-reduce skipped: a world of one process")
    code = train(cfg, session)
    if session.is_main and code == 0:
        log.info(
            "smoke test passed: %d ranks on %s, all-reduce checked, %d training steps, "
            "last loss %.4f",
            session.world_size,
            device.device,
            session.step,
            session.last_loss if session.last_loss is not None else float("nan"),
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
