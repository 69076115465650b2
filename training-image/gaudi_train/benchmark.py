"""`run_benchmark()`: the reference workload's throughput on the device present.

The operator's `gaudi3 benchmark train` calls this. It runs the launcher in a child
process, so the caller's process never loads torch or installs torchrun's signal
handlers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class BenchmarkError(RuntimeError):
    """The benchmark run failed; the message carries the end of its output."""


def run_benchmark(
    *,
    nproc: int = 1,
    steps: int = 30,
    warmup_steps: int = 5,
    micro_batch: int = 8,
    global_batch: int | None = None,
    device: str = "auto",
    seq_len: int = 64,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    timeout: float = 900,
) -> dict[str, Any]:
    """Run `warmup_steps + steps` optimizer steps on `nproc` local processes.

    Returns device, backend, world_size, global_batch, micro_batch,
    accumulation_steps, samples_per_second, tokens_per_second, step_seconds_mean,
    step_seconds_p50, step_seconds_max, timed_steps, parameters and torch_version.
    """
    with tempfile.TemporaryDirectory(prefix="gaudi3-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "gaudi_train.cli",
            "--benchmark",
            "--no-metrics",
            f"--benchmark-json={out}",
            f"--nproc={nproc}",
            f"--benchmark-steps={steps}",
            f"--warmup-steps={warmup_steps}",
            f"--micro-batch={micro_batch}",
            f"--device={device}",
            f"--seq-len={seq_len}",
            f"--d-model={d_model}",
            f"--n-layers={n_layers}",
            f"--n-heads={n_heads}",
        ]
        if global_batch is not None:
            cmd.append(f"--global-batch={global_batch}")
        env = dict(os.environ)
        # A local measurement: ignore a job's rendezvous settings if the caller has them.
        for name in list(env):
            if name.startswith("PET_"):
                del env[name]
        paths = [str(PACKAGE_ROOT), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
            raise BenchmarkError(f"benchmark exited with {proc.returncode}:\n{tail}")
        result: dict[str, Any] = json.loads(out.read_text())
        return result
