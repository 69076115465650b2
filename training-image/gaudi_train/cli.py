"""`gaudi3-train`: the launcher's command line (argparse only: the image has no typer).

    gaudi3-train [options]                         train the built-in reference model
    gaudi3-train [options] --script train.py ...   run your script under the launcher
    gaudi3-train --benchmark [options]             measure samples/s and step time
    gaudi3-train --smoke [options]                 check an all-reduce, then train a few steps

Flags override the GAUDI3_* / PET_* environment the operator sets.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from gaudi_train.env import ControlSettings, ElasticSettings, EnvError, JobSettings

BENCHMARK_FIELDS = (
    ("device", "device"),
    ("backend", "backend"),
    ("world_size", "world size"),
    ("global_batch", "global batch"),
    ("micro_batch", "micro batch"),
    ("accumulation_steps", "accumulation steps"),
    ("timed_steps", "timed steps"),
    ("samples_per_second", "samples/s"),
    ("tokens_per_second", "tokens/s"),
    ("step_seconds_mean", "step time mean (s)"),
    ("step_seconds_p50", "step time p50 (s)"),
)


def build_parser() -> argparse.ArgumentParser:
    from gaudi_train.workload import WorkloadConfig

    parser = argparse.ArgumentParser(
        prog="gaudi3-train",
        description="Elastic PyTorch training launcher for Intel Gaudi (falls back to CUDA/CPU).",
        epilog="Everything after --script PATH is passed to that script.",
    )
    launch = parser.add_argument_group("launcher")
    launch.add_argument("--nproc", type=int, help="processes here (default: one per device)")
    launch.add_argument("--max-restarts", type=int, help="torchrun restarts (PET_MAX_RESTARTS)")
    launch.add_argument("--device", choices=("auto", "hpu", "cuda", "cpu"), help="GAUDI3_DEVICE")
    launch.add_argument(
        "--hpu-mode",
        choices=("eager", "lazy"),
        help="GAUDI3_HPU_MODE: Intel's execution mode, sets PT_HPU_LAZY_MODE (default eager)",
    )
    launch.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="GAUDI3_COMPILE: torch.compile the model (hpu_backend on Gaudi, eager mode only)",
    )
    launch.add_argument("--checkpoint-dir", help="GAUDI3_CHECKPOINT_DIR (default: none locally)")
    launch.add_argument("--checkpoint-interval", type=int, help="GAUDI3_CHECKPOINT_INTERVAL")
    launch.add_argument("--checkpoint-keep", type=int, help="complete checkpoints kept (3)")
    launch.add_argument("--global-batch", type=int, help="GAUDI3_GLOBAL_BATCH_SIZE")
    launch.add_argument("--micro-batch", type=int, help="GAUDI3_MICRO_BATCH_SIZE (8)")
    launch.add_argument("--metrics-port", type=int, help="GAUDI3_METRICS_PORT (9400) + local rank")
    launch.add_argument("--no-metrics", action="store_true", help="serve no metrics endpoint")
    work = parser.add_argument_group("reference workload (ignored with --script)")
    WorkloadConfig.add_arguments(work)
    bench = parser.add_argument_group("benchmark")
    bench.add_argument("--benchmark", action="store_true", help="measure the reference workload")
    bench.add_argument("--benchmark-steps", type=int, default=30, help="timed steps (30)")
    bench.add_argument("--warmup-steps", type=int, default=5, help="untimed first steps (5)")
    bench.add_argument("--benchmark-json", type=Path, help="also write the result here")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    smoke = parser.add_argument_group("hardware acceptance run (docs/gaudi.md)")
    smoke.add_argument(
        "--smoke",
        action="store_true",
        help="check an all-reduce over every rank (HCCL on Gaudi), then train --max-steps",
    )
    smoke.add_argument("--allreduce-mib", type=int, default=64, help="MiB per rank (64)")
    smoke.add_argument("--allreduce-runs", type=int, default=5, help="timed all-reduces (5)")
    return parser


def split_script(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Launcher flags, and the script with its own arguments (after --script)."""
    for i, arg in enumerate(argv):
        if arg == "--script":
            if i + 1 >= len(argv):
                raise SystemExit("gaudi3-train: error: --script needs a path")
            return argv[:i], argv[i + 1 :]
        if arg.startswith("--script="):
            return argv[:i], [arg.split("=", 1)[1], *argv[i + 1 :]]
    return argv, None


def settings_from(args: argparse.Namespace) -> JobSettings:
    """GAUDI3_* from the environment, overridden by the flags that were given."""
    settings = JobSettings.from_env()
    overrides: dict[str, Any] = {
        "device": args.device,
        "hpu_mode": args.hpu_mode,
        "compile": args.compile,
        "checkpoint_dir": args.checkpoint_dir,
        "checkpoint_interval": args.checkpoint_interval,
        "checkpoint_keep": args.checkpoint_keep,
        "global_batch": args.global_batch,
        "micro_batch": args.micro_batch,
        "metrics_port": args.metrics_port,
    }
    settings = dataclasses.replace(
        settings, **{k: v for k, v in overrides.items() if v is not None}
    )
    if args.no_metrics:
        settings = dataclasses.replace(settings, metrics_port=None)
    return settings


def main(argv: list[str] | None = None) -> int:
    from gaudi_train.launcher import LaunchRequest, launch
    from gaudi_train.workload import WorkloadConfig

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s gaudi3-train %(levelname)s: %(message)s"
    )
    own, script = split_script(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(own)
    try:
        settings = settings_from(args)
        elastic = ElasticSettings.from_env()
        control = ControlSettings.from_env()
    except EnvError as exc:
        parser.error(str(exc))
    workload = WorkloadConfig.from_namespace(args)

    if args.smoke and (script is not None or args.benchmark):
        parser.error("--smoke runs the built-in workload; drop --script and --benchmark")
    if script is not None:
        if args.benchmark:
            parser.error("--benchmark measures the built-in workload; drop --script")
        entry = script
    elif args.benchmark:
        return benchmark(args, settings, elastic, workload)
    elif args.smoke:
        if args.allreduce_mib < 1 or args.allreduce_runs < 1:
            parser.error("--allreduce-mib and --allreduce-runs must be at least 1")
        entry = [
            "--module",
            "gaudi_train.smoke",
            *workload.to_argv(),
            f"--allreduce-mib={args.allreduce_mib}",
            f"--allreduce-runs={args.allreduce_runs}",
        ]
    else:
        entry = ["--module", "gaudi_train.worker", *workload.to_argv()]
    request = LaunchRequest(settings, elastic, entry, args.nproc, args.max_restarts)
    return launch(dataclasses.replace(request, control=control))


def benchmark(
    args: argparse.Namespace, settings: JobSettings, elastic: ElasticSettings, workload: Any
) -> int:
    from gaudi_train.launcher import LaunchRequest, launch

    # A benchmark neither resumes nor writes checkpoints, and serves metrics only if asked.
    settings = dataclasses.replace(
        settings,
        checkpoint_dir=None,
        metrics_port=args.metrics_port if args.metrics_port and not args.no_metrics else None,
    )
    workload = dataclasses.replace(
        workload, max_steps=args.warmup_steps + args.benchmark_steps, log_every=10**9
    )
    with tempfile.TemporaryDirectory(prefix="gaudi3-bench-") as tmp:
        out = args.benchmark_json or Path(tmp) / "result.json"
        entry = [
            "--module",
            "gaudi_train.worker",
            *workload.to_argv(),
            f"--warmup-steps={args.warmup_steps}",
            f"--benchmark-json={out}",
        ]
        code = launch(LaunchRequest(settings, elastic, entry, args.nproc, max_restarts=0))
        if code != 0:
            return code
        if not out.exists():  # another pod's rank 0 measured it
            return 0
        result = json.loads(out.read_text())
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_benchmark(result))
    return 0


def format_benchmark(result: dict[str, Any]) -> str:
    lines = ["gaudi3-train benchmark (reference decoder-only LM)"]
    for key, label in BENCHMARK_FIELDS:
        value = result.get(key)
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"  {label:<22} {text}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
