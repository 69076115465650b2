"""The helper API a training script calls under `gaudi3-train` (the built-in one too).

    import gaudi_train

    session = gaudi_train.init()                 # process group, device, batch plan, metrics
    model = session.wrap(MyModel())              # to the device, DDP when world > 1, --compile
    optimizer = torch.optim.AdamW(model.parameters())
    step = session.restore(model, optimizer)     # 0, or the step of the latest checkpoint
    while step < max_steps:
        step += 1
        ...  # session.batch.accumulation_steps micro batches of session.batch.micro_batch,
        ...  # session.device.mark_step() after each backward and after optimizer.step()
        if session.step_done(step, loss=loss.item(), samples=n):
            break                                # SIGTERM somewhere: checkpoint written
    raise SystemExit(session.finish())           # final checkpoint, exit code for the pod

`step_done` and `finish` are collective: every rank calls them at the same step.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import timedelta
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gaudi_train.batching import BatchPlan, plan
from gaudi_train.checkpoint import Checkpointer, CheckpointInfo
from gaudi_train.device import DeviceInfo, select_device
from gaudi_train.env import EXIT_PEER_STOPPED, JobSettings, RankInfo
from gaudi_train.metrics import TrainingMetrics

log = logging.getLogger(__name__)


class Session:
    """One worker process's view of the job; create it with `gaudi_train.init()`."""

    def __init__(
        self,
        settings: JobSettings | None = None,
        rank: RankInfo | None = None,
        *,
        seed: int = 0,
        serve_metrics: bool = True,
        timeout: timedelta | None = None,
    ) -> None:
        self.settings = settings or JobSettings.from_env()
        self.rank = rank or RankInfo.from_env()
        self.device: DeviceInfo = select_device(self.settings.device, self.rank.local_rank)
        if self.rank.world_size > 1 and not dist.is_initialized():
            kwargs: dict[str, Any] = {"backend": self.device.backend}
            if timeout is not None:
                kwargs["timeout"] = timeout
            kwargs.update(agent_store(self.rank, timeout))
            dist.init_process_group(**kwargs)
        self.stop_signal: int | None = None
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

        self.checkpointer: Checkpointer | None = None
        self.resumed: CheckpointInfo | None = None
        if self.settings.checkpoint_dir:
            self.checkpointer = Checkpointer(
                self.settings.checkpoint_dir,
                self.settings.checkpoint_keep,
                seed,
                device_kind=self.device.kind,
            )
            self.checkpointer.clean_partial()
            self.resumed = self.checkpointer.latest()

        # Without an explicit global batch, keep the one the job started with.
        global_batch = self.settings.global_batch
        if global_batch is None and self.resumed is not None:
            global_batch = self.resumed.extra.get("global_batch")
        self.batch: BatchPlan = plan(global_batch, self.settings.micro_batch, self.world_size)

        self.metrics = TrainingMetrics(self.rank.job_name, self.rank.namespace, self.rank.rank)
        self.metrics.world_size.set(self.world_size)
        self.metrics.restarts.set(self.rank.restart_count)
        if serve_metrics and self.settings.metrics_port is not None:
            self.metrics.serve(
                self.settings.metrics_port + self.rank.local_rank, self.settings.metrics_address
            )
        if self.resumed is not None:
            self.metrics.record_checkpoint(self.resumed.step, self.resumed.timestamp)

        self.step = 0
        self.last_loss: float | None = None
        self.extra: dict[str, Any] = {}  # JSON values saved with every checkpoint
        self._model: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._step_started = time.perf_counter()

    # -- who and where -------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist.is_initialized() else self.rank.world_size

    @property
    def is_main(self) -> bool:
        return self.rank.is_main

    def wrap(self, model: nn.Module) -> nn.Module:
        """Move `model` to this process's device; DDP-wrap it when the world has peers
        (Intel's DDP arguments on HPUs); torch.compile it when the job asks (`--compile`:
        hpu_backend on Gaudi). Compiled after the DDP wrap, as Intel's references do."""
        model = model.to(self.device.torch_device())
        if self.world_size > 1:
            kwargs = self.device.ddp_arguments(self.rank.local_rank)
            model = DistributedDataParallel(model, **kwargs)
        if self.settings.compile:
            model = self.device.compiled(model)
        return model

    # -- checkpoints ----------------------------------------------------------------------
    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Load the latest complete checkpoint into model and optimizer; return its step.

        Also remembers model and optimizer, so `step_done` and `finish` can save them.
        """
        self._model, self._optimizer = model, optimizer
        if self.resumed is not None and self.checkpointer is not None:
            self.checkpointer.load(self.resumed, model, optimizer)
            self.step = self.resumed.step
            self.extra.update(self.resumed.extra.get("user", {}))
            log.info(
                "resumed from step %d (written by %d processes, now %d)",
                self.step,
                self.resumed.world_size,
                self.world_size,
            )
        self.metrics.step.set(self.step)
        self._step_started = time.perf_counter()
        return self.step

    def checkpoint_due(self, step: int) -> bool:
        return (
            self.checkpointer is not None
            and step > 0
            and step % self.settings.checkpoint_interval == 0
            and self.checkpointer.last_saved_step != step
        )

    def save(self, step: int | None = None) -> CheckpointInfo | None:
        """Checkpoint the restored model and optimizer now (collective); None if disabled."""
        if self.checkpointer is None or self._model is None:
            return None
        step = self.step if step is None else step
        extra = {
            "global_batch": self.batch.global_batch,
            "micro_batch": self.batch.micro_batch,
            "samples_seen": step * self.batch.global_batch,
            "user": self.extra,
        }
        info = self.checkpointer.save(step, self._model, self._optimizer, extra)
        self.metrics.record_checkpoint(info.step, info.timestamp)
        return info

    # -- per step ---------------------------------------------------------------------------
    def step_done(self, step: int, loss: float, samples: int | None = None) -> bool:
        """Record a finished optimizer step; return True when training must stop now.

        Collective: the ranks agree on the loss (mean) and on stopping, so when any
        process got SIGTERM, all of them checkpoint this same step and return True.
        """
        self.step = step
        agreed = torch.tensor([loss, 1.0 if self.stop_signal is not None else 0.0])
        if dist.is_initialized():
            # gloo reduces CPU tensors; hccl/nccl need them on the device.
            if self.device.backend != "gloo":
                agreed = agreed.to(self.device.torch_device())
            dist.all_reduce(agreed)
            agreed = agreed.cpu()
        mean_loss = float(agreed[0]) / self.world_size
        stop = float(agreed[1]) > 0
        now = time.perf_counter()
        per_rank = self.batch.global_batch // self.world_size if samples is None else samples
        self.metrics.record_step(step, per_rank, now - self._step_started, mean_loss)
        self.last_loss = mean_loss
        if stop or self.checkpoint_due(step):
            self.save(step)
        self._step_started = time.perf_counter()
        return stop

    # -- the end ----------------------------------------------------------------------------
    def finish(self) -> int:
        """Save a last checkpoint if steps ran since the previous one; return the exit code.

        0 normally; 75 on ranks that stopped only because a peer got SIGTERM, so
        that torchrun or the operator restarts them from the checkpoint just written.
        """
        if (
            self.checkpointer is not None
            and self._model is not None
            and self.step > 0
            and self.checkpointer.last_saved_step != self.step
        ):
            self.save(self.step)
        peer_stopped = False
        if dist.is_initialized():
            flag = torch.tensor([1.0 if self.stop_signal is not None else 0.0])
            if self.device.backend != "gloo":
                flag = flag.to(self.device.torch_device())
            dist.all_reduce(flag)
            peer_stopped = float(flag.cpu()[0]) > 0 and self.stop_signal is None
            dist.destroy_process_group()
        signal.signal(signal.SIGTERM, self._previous_handler)
        return EXIT_PEER_STOPPED if peer_stopped else 0

    def _on_sigterm(self, signum: int, _frame: FrameType | None) -> None:
        # Only set a flag: the checkpoint is collective, so it happens at the next
        # step boundary that all ranks agree on (see step_done).
        log.warning("rank %d got signal %d: checkpointing at the next step", self.rank.rank, signum)
        self.stop_signal = signum


def agent_store(rank: RankInfo, timeout: timedelta | None) -> dict[str, Any]:
    """init_process_group arguments for torchrun's shared store, when it shares one.

    torch's env:// path connects to it with TCPStore's default (libuv) client, which
    torch builds without libuv (Debian's) refuse; the classic client works everywhere.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    from gaudi_train.rendezvous import client_store

    store = client_store(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        timeout or timedelta(minutes=10),
        rank.world_size,
    )
    return {"store": store, "rank": rank.rank, "world_size": rank.world_size}


def init(**kwargs: Any) -> Session:
    """Start this process's session: see `Session` for the arguments."""
    return Session(**kwargs)
