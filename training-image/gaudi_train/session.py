"""The helper API a training script calls under `gaudi3-train` (the built-in one too).

    import gaudi_train

    session = gaudi_train.init()                 # process group, device, batch plan, metrics
    model = session.wrap(MyModel())              # to the device, DDP when world > 1, --compile
    optimizer = torch.optim.AdamW(model.parameters())
    step = session.restore(model, optimizer)     # 0, or the step it resumes from
    while step < max_steps:
        try:
            ...  # session.batch.accumulation_steps micro batches of session.batch.micro_batch,
            ...  # session.device.mark_step() after each backward and after optimizer.step()
            stop = session.step_done(step + 1, loss=loss.item(), samples=n)
        except Exception as exc:
            model = session.recover(exc)         # a new world; re-raises anything else
            step = session.step
            continue
        step = session.step
        if stop:
            break                                # SIGTERM somewhere: checkpoint written
    raise SystemExit(session.finish())           # final checkpoint, exit code for the pod

`step_done` and `finish` are collective: every rank calls them at the same step.

Under the operator's recovery (`gaudi_train.managed`) the world can end while the process
lives on: a peer died (the collective raised), a peer was told to stop, or the launcher
asked every rank to leave (they vote on it in `step_done`). `recover` then destroys the
process group, keeps model and optimizer, waits for the launcher's next world, and
resumes there from the newest state any rank holds (`gaudi_train.peer_state`) or from
the checkpoint. Without that recovery (torchrun) `recover` re-raises: torchrun restarts
the process and it resumes from the checkpoint.
"""

from __future__ import annotations

import gc
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

from gaudi_train import peer_state, worker_link, world_store
from gaudi_train.batching import BatchPlan, plan
from gaudi_train.checkpoint import Checkpointer, CheckpointInfo, reseed
from gaudi_train.device import DeviceInfo, select_device
from gaudi_train.env import EXIT_PEER_STOPPED, JobSettings, RankInfo
from gaudi_train.metrics import TrainingMetrics

log = logging.getLogger(__name__)

RDZV_STORE_TIMEOUT = timedelta(seconds=60)


class WorldChanged(RuntimeError):
    """This process's world ended while the process lives on (operator-managed recovery).

    `reason` is one of gaudi_train.worker_link's LEFT_*: a peer is stopping, the launcher
    asked the ranks to leave, or the world was given up before it formed."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


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
        self.seed = seed
        self.timeout = timeout
        self.device: DeviceInfo = select_device(self.settings.device, self.rank.local_rank)
        self.stop_signal: int | None = None
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        # Under operator-managed recovery: the launcher's link, the world's generation.
        self.link = worker_link.current()
        self.generation: int | None = None
        self._rdzv: tuple[tuple[str, int], Any] | None = None
        self._valid = False  # model and optimizer hold the state of `self.step`
        self._agreed_stop: bool | None = None

        self.step = 0
        self.last_loss: float | None = None
        self.extra: dict[str, Any] = {}  # JSON values saved with every checkpoint
        self._model: nn.Module | None = None
        self._raw: nn.Module | None = None  # what `wrap` was given, moved to the device
        self._ddp: DistributedDataParallel | None = None  # the wrapper of the current world
        self._optimizer: torch.optim.Optimizer | None = None
        self._global_batch: int | None = self.settings.global_batch

        self.checkpointer: Checkpointer | None = None
        if self.settings.checkpoint_dir:
            self.checkpointer = Checkpointer(
                self.settings.checkpoint_dir,
                self.settings.checkpoint_keep,
                seed,
                device_kind=self.device.kind,
            )
        self.resumed: CheckpointInfo | None = None
        self.metrics: TrainingMetrics | None = None
        self.batch: BatchPlan
        if self.link is not None:
            self.link.send("session")
            self._first_world()
        else:
            if self.rank.world_size > 1 and not dist.is_initialized():
                kwargs: dict[str, Any] = {"backend": self.device.backend}
                if timeout is not None:
                    kwargs["timeout"] = timeout
                kwargs.update(agent_store(self.rank, timeout))
                dist.init_process_group(**kwargs)
            self._world_formed()
        assert self.metrics is not None
        if serve_metrics and self.settings.metrics_port is not None:
            self.metrics.serve(
                self.settings.metrics_port + self.rank.local_rank, self.settings.metrics_address
            )
        self._step_started = time.perf_counter()

    def _world_formed(self) -> None:
        """Collective: what every new world does before training (checkpoints, batch)."""
        if self.checkpointer is not None:
            self.checkpointer.clean_partial()
            self.resumed = self.checkpointer.latest()
        # Without an explicit global batch, keep the one the job started with.
        if self._global_batch is None and self.resumed is not None:
            self._global_batch = self.resumed.extra.get("global_batch")
        self.batch = plan(self._global_batch, self.settings.micro_batch, self.world_size)
        if self.metrics is None:
            self.metrics = TrainingMetrics(self.rank.job_name, self.rank.namespace, self.rank.rank)
        self.metrics.world_size.set(self.world_size)
        self.metrics.restarts.set(
            self.generation if self.generation is not None else self.rank.restart_count
        )
        if self.resumed is not None:
            self.metrics.record_checkpoint(self.resumed.step, self.resumed.timestamp)

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
        self._raw = model
        if self.world_size > 1:
            kwargs = self.device.ddp_arguments(self.rank.local_rank)
            model = self._ddp = DistributedDataParallel(model, **kwargs)
        if self.settings.compile:
            model = self.device.compiled(model)
        return model

    # -- checkpoints ----------------------------------------------------------------------
    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Load the newest state into model and optimizer; return its step.

        Under torchrun: the latest complete checkpoint. Under operator-managed recovery:
        the newest state a rank of this world holds (a survivor of the previous world),
        else the checkpoint. Also remembers model and optimizer, so `step_done`,
        `finish` and `recover` can use them.
        """
        self._model, self._optimizer = model, optimizer
        if self.link is not None:
            self._resume()
        elif self.resumed is not None and self.checkpointer is not None:
            self.checkpointer.load(self.resumed, model, optimizer)
            self.step = self.resumed.step
            self.extra.update(self.resumed.extra.get("user", {}))
            log.info(
                "resumed from step %d (written by %d processes, now %d)",
                self.step,
                self.resumed.world_size,
                self.world_size,
            )
        assert self.metrics is not None
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
        assert self.metrics is not None
        self.metrics.record_checkpoint(info.step, info.timestamp)
        return info

    # -- per step ---------------------------------------------------------------------------
    def step_done(self, step: int, loss: float, samples: int | None = None) -> bool:
        """Record a finished optimizer step; return True when training must stop now.

        Collective: the ranks agree on the loss (mean) and on stopping, so when any
        process got SIGTERM, all of them checkpoint this same step and return True.
        Under operator-managed recovery they also agree on leaving the world when the
        launcher asks one of them to: all leave after this same step (WorldChanged).
        """
        self.step = step  # this rank completed the step: its state is that of `step`
        leave = self.link is not None and self.link.leave_requested(self.generation or 0)
        agreed = torch.tensor([loss, 1.0 if self.stop_signal is not None else 0.0, float(leave)])
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
        assert self.metrics is not None
        self.metrics.record_step(step, per_rank, now - self._step_started, mean_loss)
        self.last_loss = mean_loss
        if stop or self.checkpoint_due(step):
            self.save(step)
        self._step_started = time.perf_counter()
        self._agreed_stop = stop
        if self.link is not None:
            self.link.step(step)
            if stop and self.stop_signal is None:
                raise WorldChanged(worker_link.LEFT_PEER_STOPPED, "a peer was told to stop")
            if float(agreed[2]) > 0 and not stop:
                raise WorldChanged(worker_link.LEFT_REQUESTED, "the launcher asked to leave")
        return stop

    # -- a world that ends (operator-managed recovery) ----------------------------------------
    def recover(self, exc: BaseException) -> nn.Module:
        """After `exc` ended this process's world: join the next one and return the model
        to train with (wrapped again; the same parameters). Collective in the new world.

        Re-raises `exc` when it is not a world's end (a bug in the step), and always
        without operator-managed recovery. `self.step`, `self.batch` and `self.rank` are
        the new world's afterwards.
        """
        if self.link is None or self._raw is None or not worker_link.is_world_error(exc):
            raise exc
        self._leave(exc)
        while True:
            try:
                self._enter(self._next_join())
                self._world_formed()
                # DDP's constructor broadcasts rank 0's weights to every rank: when rank 0
                # is a new process, that would overwrite a survivor's trained weights
                # before `_resume` could take them as the peer state. Kept, and put back.
                kept = self._keep_weights()
                model = self.wrap(self._raw)
                self._put_back(kept)
                self._model = model
                self._resume()
                assert self.metrics is not None
                self.metrics.step.set(self.step)
                self._step_started = time.perf_counter()
                return model
            except Exception as again:
                if not worker_link.is_world_error(again):
                    raise
                self._leave(again)

    def _keep_weights(self) -> list[torch.Tensor] | None:
        """A survivor's parameters and buffers, copied (None when it holds no state)."""
        if not self._valid or self._raw is None:
            return None
        with torch.no_grad():
            return [t.detach().clone() for t in (*self._raw.parameters(), *self._raw.buffers())]

    def _put_back(self, kept: list[torch.Tensor] | None) -> None:
        if kept is None or self._raw is None:
            return
        with torch.no_grad():
            for t, saved in zip((*self._raw.parameters(), *self._raw.buffers()), kept, strict=True):
                t.copy_(saved)

    def _first_world(self) -> None:
        while True:
            try:
                self._enter(self._next_join())
                self._world_formed()
                return
            except Exception as exc:
                if not worker_link.is_world_error(exc):
                    raise
                self._leave(exc)

    def _next_join(self) -> worker_link.Join:
        assert self.link is not None
        if self.generation is None and "GAUDI3_IN_PLACE_GENERATION" in os.environ:
            # The first world: the fork server's runner took its join before we started.
            return self._join_from_env()
        try:
            return self.link.next_join(stop=lambda: self.stop_signal is not None)
        except worker_link.LauncherGone:
            signum = self.stop_signal or signal.SIGTERM
            log.warning("rank %d stopping outside a world (signal %d)", self.rank.rank, signum)
            raise SystemExit(128 + signum) from None

    def _join_from_env(self) -> worker_link.Join:
        env = os.environ
        host, _, port = env["GAUDI3_RDZV_STORE"].rpartition(":")
        return worker_link.Join(
            generation=int(env["GAUDI3_IN_PLACE_GENERATION"]),
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env["LOCAL_RANK"]),
            local_world_size=int(env["LOCAL_WORLD_SIZE"]),
            node_rank=int(env["GROUP_RANK"]),
            world_pods=int(env.get("GROUP_WORLD_SIZE", "1")),
            rdzv_host=host,
            rdzv_port=int(port),
            master_addr=env.get("MASTER_ADDR", ""),
            master_port=int(env.get("MASTER_PORT", "0") or 0),
            run_id=env.get("TORCHELASTIC_RUN_ID", ""),
        )

    def _rdzv_store(self, join: worker_link.Join) -> Any:
        endpoint = (join.rdzv_host, join.rdzv_port)
        if self._rdzv is None or self._rdzv[0] != endpoint:
            from gaudi_train.rendezvous import client_store

            self._rdzv = (endpoint, client_store(*endpoint, RDZV_STORE_TIMEOUT))
        return self._rdzv[1]

    def _enter(self, join: worker_link.Join) -> None:
        """Form the process group of `join`'s world (WorldChanged if it is given up)."""
        assert self.link is not None
        os.environ.update(join.env())
        self.rank = RankInfo.from_env()
        self.generation = join.generation
        link = self.link
        try:
            store = self._rdzv_store(join)
            met = world_store.wait_ready(
                store,
                join.generation,
                join.rank,
                join.world_size,
                give_up=lambda: (
                    link.leave_requested(join.generation) or self.stop_signal is not None
                ),
            )
        except Exception:
            self._rdzv = None  # its host may be gone: connect afresh next time
            raise
        if not met:
            raise WorldChanged(
                worker_link.LEFT_ABANDONED,
                f"the world of generation {join.generation} was given up",
            )
        if join.world_size > 1:
            from torch.distributed import PrefixStore

            kwargs: dict[str, Any] = {}
            if self.timeout is not None:
                kwargs["timeout"] = self.timeout
            dist.init_process_group(
                backend=self.device.backend,
                store=PrefixStore(f"{world_store.prefix(join.generation)}pg/", store),
                rank=join.rank,
                world_size=join.world_size,
                **kwargs,
            )
        link.send("joined", generation=join.generation, rank=join.rank)

    def _leave(self, exc: BaseException) -> None:
        """Out of the world: its process group destroyed, model and optimizer kept."""
        assert self.link is not None
        reason = exc.reason if isinstance(exc, WorldChanged) else worker_link.LEFT_BROKEN
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as err:  # a broken group may fail to close cleanly
                log.debug("destroying the broken process group: %s", err)
        release_group(self._ddp, exc)
        self._ddp = self._model = None
        log.warning(
            "rank %d left the world of generation %s at step %d (%s: %s); waiting for the next",
            self.rank.rank,
            self.generation,
            self.step,
            reason,
            str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
        )
        self.link.send(
            "left",
            generation=self.generation if self.generation is not None else -1,
            reason=reason,
            step=self.step,
            valid=self._valid,
            error=str(exc)[:500],
        )

    def _resume(self) -> None:
        """Collective: take the newest state a rank of this world holds, else the
        checkpoint; log and report which."""
        assert self.link is not None and self._model is not None
        # Step 0 is no state worth sending (and an optimizer that never stepped has none).
        mine = self.step if self._valid and self.step > 0 and peer_state_enabled() else None
        best, source = peer_state.agree_source(mine, self.rank.rank, self._comm_device())
        newer_checkpoint = self.resumed is not None and self.resumed.step > best
        if source is not None and not newer_checkpoint and self._from_peer(source, best):
            return
        self._valid = False
        if self.resumed is not None and self.checkpointer is not None:
            self.checkpointer.load(self.resumed, self._model, self._optimizer)
            self.step = self.resumed.step
            self.extra.update(self.resumed.extra.get("user", {}))
            self._report("checkpoint", None)
            log.info(
                "resumed from checkpoint at step %d (written by %d processes, now %d)",
                self.step,
                self.resumed.world_size,
                self.world_size,
            )
        else:
            self.step = 0
            self._report("none", None)
        self._valid = True

    def _from_peer(self, source: int, step: int) -> bool:
        assert self._model is not None
        giving = self.rank.rank == source
        meta = {"step": self.step, "extra": self.extra, "global_batch": self.batch.global_batch}
        if not giving:
            self._valid = False
        if dist.is_initialized():
            got = peer_state.broadcast_state(
                self._model, self._optimizer, source, meta if giving else None, self._comm_device()
            )
        else:  # a world of one: the only rank is its own survivor
            got = meta
        if got is None:
            return False
        if not giving:
            self.step = int(got["step"])
            self.extra = dict(got["extra"])
            # A rank that did not survive has no random state of its own to continue.
            reseed(self.seed, self.step, self.rank.rank, self.device.kind)
        self._global_batch = int(got["global_batch"])
        self.batch = plan(self._global_batch, self.settings.micro_batch, self.world_size)
        self._valid = True
        self._report("peer", source)
        log.info("resumed from peer rank %d at step %d", source, self.step)
        return True

    def _report(self, source: str, from_rank: int | None) -> None:
        assert self.link is not None
        self.link.send(
            "resumed",
            generation=self.generation,
            rank=self.rank.rank,
            source=source,
            step=self.step,
            fromRank=from_rank,
        )

    def _comm_device(self) -> torch.device:
        return torch.device("cpu") if self.device.backend == "gloo" else self.device.torch_device()

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
            if self._agreed_stop:
                # Every rank learnt of the stop in step_done; under managed recovery the
                # ranks without the signal have left already, so no collective here.
                peer_stopped = self.stop_signal is None
            else:
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


def release_group(ddp: DistributedDataParallel | None, exc: BaseException) -> None:
    """Free the old world's process group now, so that its connections close.

    A gloo collective does not fail when an unrelated peer dies: a rank that waits on a
    live peer which has left waits for the group's timeout (30 min by default). Peers
    are freed from that wait only when the leaving rank's sockets close, which happens
    when its process group object is freed, not when it is destroyed: the DDP wrapper
    (its reducer, logger and `process_group`) and the frames of the failed step (held
    by the exception's traceback) still reference it. Measured on gloo here: the waiting
    peer raised within 0.1 s of the leaving rank freeing the group, and not before that
    rank exited when the group was only destroyed, aborted or shut down."""
    if ddp is not None:
        for name in ("reducer", "logger", "process_group"):
            ddp.__dict__.pop(name, None)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
    gc.collect()


def peer_state_enabled() -> bool:
    """GAUDI3_PEER_STATE=0 makes every new world resume from the checkpoint (to compare)."""
    value = os.environ.get("GAUDI3_PEER_STATE", "1").strip().lower()
    return value not in ("0", "false", "no", "off")


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
