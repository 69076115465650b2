"""Entry point of each worker process that torchrun starts (`python -m gaudi_train.worker`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from gaudi_train.batching import BatchConfigError
from gaudi_train.env import EXIT_CONFIG_ERROR, RankInfo

log = logging.getLogger("gaudi_train")


def setup_logging(rank: RankInfo) -> None:
    logging.basicConfig(
        level=os.environ.get("GAUDI3_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s [rank {rank.rank}] %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from gaudi_train.workload import WorkloadConfig

    parser = argparse.ArgumentParser(prog="gaudi_train.worker")
    WorkloadConfig.add_arguments(parser)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--benchmark-json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    rank = RankInfo.from_env()
    setup_logging(rank)
    args = parse_args(argv)
    from gaudi_train.session import Session
    from gaudi_train.workload import StepTimes, WorkloadConfig, train

    cfg = WorkloadConfig.from_namespace(args)
    try:
        session = Session(seed=cfg.seed)
    except BatchConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG_ERROR
    times = StepTimes([]) if args.benchmark_json else None
    try:
        code = train(cfg, session, args.warmup_steps, times)
    except BatchConfigError as exc:  # a new world whose size cannot keep the global batch
        log.error("%s", exc)
        return EXIT_CONFIG_ERROR
    if times is not None and rank.is_main:
        write_benchmark(args.benchmark_json, session, cfg, args.warmup_steps, times.seconds)
    return code


def write_benchmark(
    path: Path, session: Any, cfg: Any, warmup_steps: int, seconds: list[float]
) -> None:
    """Rank 0 writes the figures; every rank took the same steps in lock-step."""
    import torch

    from gaudi_train.model import TinyLM

    if not seconds:
        raise SystemExit("benchmark: no timed steps; raise --benchmark-steps above warm-up")
    batch = session.batch
    mean = statistics.fmean(seconds)
    result = {
        "device": session.device.kind,
        "torch_device": session.device.device,
        "backend": session.device.backend,
        "world_size": batch.world_size,
        "global_batch": batch.global_batch,
        "micro_batch": batch.micro_batch,
        "accumulation_steps": batch.accumulation_steps,
        "seq_len": cfg.seq_len,
        "parameters": sum(p.numel() for p in TinyLM(cfg.model_config()).parameters()),
        "timed_steps": len(seconds),
        "warmup_steps": warmup_steps,
        "step_seconds_mean": mean,
        "step_seconds_p50": statistics.median(seconds),
        "step_seconds_max": max(seconds),
        "samples_per_second": batch.global_batch / mean,
        "tokens_per_second": batch.global_batch * cfg.seq_len / mean,
        "torch_version": torch.__version__,
    }
    path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
