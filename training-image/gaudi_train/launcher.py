"""Run the workers, one per device: under torchrun elastic, or under the operator's recovery.

Inside a GaudiTrainingJob pod the rendezvous comes from the operator's PET_*
variables; on a workstation `--standalone` gives a private rendezvous on a free port.
torchrun restarts the local workers (up to PET_MAX_RESTARTS) when one of them dies,
and forwards SIGTERM to them so they can checkpoint before the pod goes away.

When the operator sets GAUDI3_CONTROL_PORT, torchrun is not used: the operator decides
every restart, in place, and surviving workers keep their state (`gaudi_train.managed`).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gaudi_train import hpu_mode, prefork
from gaudi_train.batching import valid_replica_counts, valid_world_sizes
from gaudi_train.env import (
    EXIT_CONFIG_ERROR,
    EXIT_PEER_STOPPED,
    ControlSettings,
    ElasticSettings,
    JobSettings,
)

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
POD_RDZV_BACKEND = "gaudi3-c10d"  # gaudi_train.rendezvous.BACKEND, without importing torch


@dataclass(frozen=True)
class LaunchRequest:
    """Everything the launcher needs; built by the CLI from flags and environment."""

    settings: JobSettings
    elastic: ElasticSettings
    entry: list[str]  # ["--module", "gaudi_train.worker", ...] or ["script.py", ...]
    nproc: int | None = None  # processes in this pod; None = PET_NPROC_PER_NODE or devices
    max_restarts: int | None = None  # None = PET_MAX_RESTARTS
    extra_env: dict[str, str] = field(default_factory=dict)
    control: ControlSettings = field(default_factory=ControlSettings)  # the operator's recovery


def device_count(prefer: str = "auto") -> int:
    """Accelerators visible here, for one process per device (1 on a CPU-only host)."""
    from gaudi_train.device import cuda_available, hpu_available

    if prefer in ("auto", "hpu") and hpu_available():
        import habana_frameworks.torch.hpu as hthpu  # type: ignore[import-not-found]

        return int(hthpu.device_count())
    if prefer in ("auto", "cuda") and cuda_available():
        import torch

        return int(torch.cuda.device_count())
    return 1


def resolve_nproc(request: LaunchRequest) -> int:
    if request.nproc is not None:
        return request.nproc
    if request.elastic.nproc_per_node is not None:
        return request.elastic.nproc_per_node
    return device_count(request.settings.device)


def check_batch(settings: JobSettings, elastic: ElasticSettings, nproc: int) -> str | None:
    """An error message when no world size the job can reach keeps the global batch."""
    if settings.global_batch is None:
        return None
    low, high = elastic.node_range()
    worlds = list(range(low * nproc, high * nproc + 1, nproc))
    valid = set(valid_world_sizes(settings.global_batch, settings.micro_batch, worlds[-1]))
    if valid & set(worlds):
        invalid = [w for w in worlds if w not in valid]
        if invalid:  # the operator resizes only to valid sizes; say which ones fail
            log.warning(
                "global batch %d cannot be split over world sizes %s; valid in range: %s",
                settings.global_batch,
                invalid,
                sorted(valid & set(worlds)),
            )
        return None
    sizes = valid_world_sizes(
        settings.global_batch, settings.micro_batch, settings.global_batch // settings.micro_batch
    )
    pods = valid_replica_counts(
        settings.global_batch, settings.micro_batch, nproc, 1, max(high, 64)
    )
    return (
        f"global batch size {settings.global_batch} with micro batch size "
        f"{settings.micro_batch} fits none of the world sizes this job can have "
        f"({', '.join(map(str, worlds))} = {low}..{high} pods x {nproc} processes). "
        f"Valid world sizes: {', '.join(map(str, sizes)) or 'none'}; "
        f"valid pod counts at {nproc} processes per pod: {', '.join(map(str, pods)) or 'none'}. "
        "Change workers.minReplicas/maxReplicas or batch.globalBatchSize/microBatchSize."
    )


def rdzv_backend(elastic: ElasticSettings) -> str:
    """torch's c10d, or ours (gaudi_train.rendezvous) when the pod knows its IP."""
    if elastic.rdzv_backend == "c10d" and elastic.pod_ip:
        return POD_RDZV_BACKEND
    return elastic.rdzv_backend


def torchrun_argv(request: LaunchRequest, nproc: int) -> list[str]:
    elastic = request.elastic
    restarts = elastic.max_restarts if request.max_restarts is None else request.max_restarts
    argv = ["--nproc-per-node", str(nproc), "--max-restarts", str(restarts)]
    if elastic.multi_node:
        argv += ["--nnodes", elastic.nnodes, "--rdzv-backend", rdzv_backend(elastic)]
        argv += ["--rdzv-endpoint", str(elastic.rdzv_endpoint)]
        if elastic.pod_ip and rdzv_backend(elastic) == POD_RDZV_BACKEND:
            # Worker 0 hosts the store (the endpoint names it); every store listens on
            # this pod's IP, and the node is known to its peers by that IP.
            host = "1" if elastic.worker_index == 0 else "0"
            conf = f"is_host={host},bind_addr={elastic.pod_ip}"
            if elastic.world_pods is not None:  # close a round once they joined
                conf += f",world_pods={elastic.world_pods}"
            argv += ["--rdzv-conf", conf]
            argv += ["--local-addr", elastic.pod_ip]
        if elastic.rdzv_id:
            argv += ["--rdzv-id", elastic.rdzv_id]
        if elastic.rdzv_backend == "static":  # only the static backend uses MASTER_*
            if elastic.master_addr:
                argv += ["--master-addr", elastic.master_addr]
            if elastic.master_port:
                argv += ["--master-port", str(elastic.master_port)]
    else:
        argv += ["--standalone", "--nnodes", "1"]
    return argv + request.entry


def habana_logs_problem(env: Mapping[str, str]) -> str | None:
    """Why HABANA_LOGS cannot be written, or None (also when it is unset).

    Intel's Gaudi software writes its logs under HABANA_LOGS (Intel's images set it to
    /var/log/habana_logs/, a folder their packages create as root: Setup_and_Install
    dockerfiles/base). Our image runs as a non-root user, so the folder must be writable
    for it; a pod that runs under another user, or with a read-only root filesystem,
    needs a writable volume there. Tried for real (create and delete a file), since
    permission bits say nothing about read-only mounts."""
    path = env.get("HABANA_LOGS", "").strip()
    if not path:
        return None
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".gaudi3-write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return (
            f"HABANA_LOGS={path} is not writable for uid {os.getuid()} "
            f"({exc.strerror or exc}): Intel's Gaudi software writes its logs there. "
            "Mount a writable volume at that path (an emptyDir in the pod template) or set "
            "HABANA_LOGS to a writable folder."
        )
    return None


def settings_problem(settings: JobSettings) -> str | None:
    """A combination of settings that cannot work on the HPU path, or None."""
    if settings.compile and settings.hpu_mode == hpu_mode.LAZY:
        # Intel's PyTorch Support Matrix: torch.compile(backend="hpu_backend") runs in
        # eager mode (PT_HPU_LAZY_MODE=0) only. Refused on every device, so a job that
        # would fail on Gaudi fails the same way in a CPU test run.
        return (
            "--compile (GAUDI3_COMPILE) needs eager mode: torch.compile(backend='hpu_backend') "
            "is not supported in lazy mode (PT_HPU_LAZY_MODE=1). Drop --compile or use "
            "--hpu-mode eager."
        )
    return None


def launch(request: LaunchRequest) -> int:
    """Run torchrun in this process and return the exit code for the pod."""
    # First of all, before anything imports torch (which loads Intel's bridge, and the
    # bridge reads PT_HPU_LAZY_MODE once): the HPU mode, inherited by every worker.
    try:
        hpu_mode.apply(request.settings.hpu_mode)
    except hpu_mode.ModeError as exc:
        print(f"gaudi3-train: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    problem = settings_problem(request.settings) or habana_logs_problem(os.environ)
    if problem:
        print(f"gaudi3-train: error: {problem}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    nproc = resolve_nproc(request)
    problem = check_batch(request.settings, request.elastic, nproc)
    if problem:
        print(f"gaudi3-train: error: {problem}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    # Workers inherit the resolved settings, so a user script sees what the CLI chose.
    os.environ.update(request.settings.to_env())
    os.environ.update(request.extra_env)
    if rdzv_backend(request.elastic) == POD_RDZV_BACKEND:
        from gaudi_train import rendezvous

        rendezvous.register()  # its bootstrap store is fresh per round already
    else:
        # torchrun's shared rendezvous store outlives a restart, and gloo/hccl then read
        # the previous attempt's peer addresses from it ("Connection refused" loops on
        # restart). A fresh store per rendezvous round, hosted by rank 0, avoids that.
        os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    # Workers import the same gaudi_train as this launcher, installed or not.
    paths = [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)

    nproc_known = (
        request.nproc is not None
        or request.elastic.nproc_per_node is not None
        or request.settings.device == "cpu"
    )
    early = prefork.wanted(os.environ, nproc_known)
    if request.control.managed:
        return launch_managed(request, nproc, early)
    if early and nproc > 1:
        # torchrun's own default, set before the fork so the workers' environment (read
        # by OpenMP when torch loads) is the one they were forked with.
        os.environ.setdefault("OMP_NUM_THREADS", "1")

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    argv = torchrun_argv(request, nproc)
    log.info("torchrun %s", " ".join(argv))
    # Before torchrun starts any thread: the workers import while the launcher rendezvous.
    pool = prefork.fork_zygotes(nproc, preload_for(request.entry)) if early else None
    try:
        with prefork.installed(pool):
            run(get_args_parser().parse_args(argv))
    except SignalException as exc:
        # The pod is being stopped; the workers got the signal too and checkpointed.
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        return failure_exit_code([f.exitcode for f in exc.failures.values()])
    return 0


def launch_managed(request: LaunchRequest, nproc: int, preload: bool) -> int:
    """The operator's recovery (gaudi_train.managed) instead of torchrun."""
    from gaudi_train.forkserver import ForkServer

    several = (request.elastic.world_pods or request.elastic.node_range()[1]) > 1
    if request.elastic.rdzv_endpoint is None and several and not request.control.spare:
        print(
            "gaudi3-train: error: operator-managed recovery of several pods needs "
            "PET_RDZV_ENDPOINT (where worker 0 hosts the world's store)",
            file=sys.stderr,
        )
        return EXIT_CONFIG_ERROR
    if nproc > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Forked before this process starts a thread. Where forking after torch is fine
    # (gaudi_train.prefork's rules), torch is imported first and shared with the server.
    if preload:
        import torch.distributed  # noqa: F401 - loaded once, inherited by every worker

        # torch._dynamo: DDP's constructor imports it (300 modules, 1-2 s of CPU here),
        # in every new world's replacement worker unless the server already has.
        preloaded = ("torch", "torch.distributed", "torch._dynamo", *preload_for(request.entry))
        server = ForkServer.start(preloaded)
    else:
        server = ForkServer.start(())
    from gaudi_train.managed import ManagedLauncher

    launcher = ManagedLauncher(
        request.settings, request.elastic, request.control, request.entry, nproc, server
    )
    return launcher.run()


def preload_for(entry: list[str]) -> tuple[str, ...]:
    """What the early workers import while they wait: the built-in worker's modules, or
    the helper API's for a user script (its own imports run when it starts)."""
    if entry[:2] == ["--module", "gaudi_train.worker"]:
        return prefork.PRELOAD
    return ("gaudi_train.session",)


def failure_exit_code(codes: list[int]) -> int:
    """Pass on the codes the operator's failure rules can act on; else 1."""
    for meaningful in (EXIT_CONFIG_ERROR, EXIT_PEER_STOPPED):
        if meaningful in codes:
            return meaningful
    return 1
