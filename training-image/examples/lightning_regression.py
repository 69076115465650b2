"""A PyTorch Lightning script run unchanged by the launcher:

    gaudi3-train --nproc 2 --checkpoint-dir /tmp/ckpt --script lightning_regression.py

It imports nothing from gaudi_train. Everything comes from the environment the
operator and torchrun set:
- the world: torchrun's RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT
  (Lightning's TorchElasticEnvironment reads them; the script only says how many
  processes per node and how many nodes there are);
- checkpoints: GAUDI3_CHECKPOINT_DIR (none when unset), GAUDI3_CHECKPOINT_INTERVAL (steps),
  GAUDI3_CHECKPOINT_KEEP;
- batch: GAUDI3_MICRO_BATCH_SIZE per process and, when the job sets it,
  GAUDI3_GLOBAL_BATCH_SIZE, kept constant over world sizes by gradient accumulation.

On start it resumes from `last.ckpt` in the checkpoint directory when there is one, so a
restarted worker (torchrun restart, or a new pod from the operator) continues at the
saved step. On Gaudi it uses lightning-habana's HPUAccelerator and HPUDDPStrategy (hccl)
when habana_frameworks imports, in the execution mode PT_HPU_LAZY_MODE names (eager
unless the job asks for lazy; lightning-habana's strategies call mark_step themselves in
lazy mode); that path follows lightning-habana's documented API and has not been run on
Gaudi hardware. Elsewhere: CPU and DDP over gloo.
"""

from __future__ import annotations

import os

# Intel's bridge reads PT_HPU_LAZY_MODE once, when it loads, and in Intel's images
# `import torch` (which lightning imports) loads it: so it is settled here, before any
# import that can pull torch in. gaudi3-train has already exported it (--hpu-mode); run
# on its own, the script gets Intel's default, eager (0).
os.environ.setdefault("PT_HPU_LAZY_MODE", "0")

import argparse
import sys
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, Dataset

TRUE_W = torch.tensor([1.0, -2.0, 3.0, 0.5, -1.5, 2.5, -0.5, 1.0])


class Regression(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """y = x . w + noise; sample i is generated from seed i, the same on every rank."""

    def __len__(self) -> int:
        return 1_000_000  # effectively endless: runs end at --max-steps

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        x = torch.randn(len(TRUE_W), generator=g)
        return x, (x @ TRUE_W + 0.1 * torch.randn((), generator=g)).unsqueeze(0)


class LinearModel(L.LightningModule):
    def __init__(self, lr: float, log_every: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(len(TRUE_W), 1)
        self.lr, self.log_every = lr, log_every
        self._printed = -1

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, sync_dist=True)  # mean over ranks, in callback_metrics
        return loss

    def on_train_start(self) -> None:
        self._printed = self.global_step  # print each optimizer step once, not the restored one
        self.print(f"training from step {self.global_step} on {self.trainer.world_size} processes")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.global_step  # optimizer steps, so it counts accumulated batches once
        if (step % self.log_every == 0 or step == 1) and step != self._printed:
            self._printed = step
            loss = float(self.trainer.callback_metrics["train_loss"])
            self.print(f"step {step} loss {loss:.4f}", flush=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class StepCheckpoint(ModelCheckpoint):
    """Saves only on batches that complete an optimizer step. With gradient accumulation,
    stock ModelCheckpoint saves the restored step again on the first batch after a resume,
    in the middle of an accumulation window (Lightning-AI/pytorch-lightning#17903)."""

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def env_int(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def accumulation(micro: int, world: int) -> int:
    """Micro batches per optimizer step that keep GAUDI3_GLOBAL_BATCH_SIZE on this world."""
    global_batch = env_int("GAUDI3_GLOBAL_BATCH_SIZE", None)
    if global_batch is None:
        return 1  # no global batch set: it is micro x world and follows the world size
    if global_batch % (micro * world):
        print(
            f"global batch {global_batch} is not a multiple of micro batch {micro} x world {world}",
            file=sys.stderr,
        )
        raise SystemExit(2)  # a configuration error: the operator's rules can Fail on it
    return global_batch // (micro * world)


def device_setup(local_world: int) -> dict[str, Any]:
    """Trainer arguments for Gaudi when its PyTorch bridge is here, else CPU with gloo."""
    try:
        import habana_frameworks.torch  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return {
            "accelerator": "cpu",
            "devices": local_world,
            "strategy": DDPStrategy(process_group_backend="gloo") if local_world > 1 else "auto",
        }
    from lightning_habana.pytorch.accelerator import (  # type: ignore[import-not-found]
        HPUAccelerator,
    )
    from lightning_habana.pytorch.strategies import (  # type: ignore[import-not-found]
        HPUDDPStrategy,
        SingleHPUStrategy,
    )

    single = local_world == 1 and env_int("WORLD_SIZE", 1) == 1
    return {
        "accelerator": HPUAccelerator(),
        "devices": local_world,
        "strategy": SingleHPUStrategy() if single else HPUDDPStrategy(),  # hccl
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--log-every", type=int, default=10)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()

    # torchrun's world: processes in this pod, and pods (nodes) in the job.
    world = env_int("WORLD_SIZE", 1) or 1
    local_world = env_int("LOCAL_WORLD_SIZE", 1) or 1
    micro = env_int("GAUDI3_MICRO_BATCH_SIZE", 8) or 8
    ckpt_dir = os.environ.get("GAUDI3_CHECKPOINT_DIR", "").strip() or None
    accum = accumulation(micro, world)
    if env_int("RANK", 0) == 0:
        print(
            f"global batch {micro * world * accum} = micro {micro} x world {world} "
            f"x accumulation {accum}"
        )

    L.seed_everything(0, verbose=False)  # the same initial weights on every rank
    callbacks: list[L.Callback] = []
    if ckpt_dir:
        callbacks.append(
            StepCheckpoint(
                dirpath=ckpt_dir,
                filename="{step}",
                every_n_train_steps=env_int("GAUDI3_CHECKPOINT_INTERVAL", 100),
                monitor="step",  # "best" = newest, so save_top_k keeps the latest ones
                mode="max",
                save_top_k=env_int("GAUDI3_CHECKPOINT_KEEP", 3) or 3,
                save_last="link",  # last.ckpt -> the newest complete step=N.ckpt
            )
        )
    trainer = L.Trainer(
        **device_setup(local_world),
        num_nodes=world // local_world,
        max_steps=args.max_steps,
        accumulate_grad_batches=accum,
        callbacks=callbacks,
        enable_checkpointing=bool(ckpt_dir),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(Regression(), batch_size=micro)  # Lightning adds the DistributedSampler
    model = LinearModel(args.lr, args.log_every)
    # "last": Lightning loads last.ckpt from the ModelCheckpoint's directory if it exists
    # (model, optimizer, step); without one it starts from scratch.
    trainer.fit(model, loader, ckpt_path="last" if ckpt_dir else None)
    if trainer.is_global_zero:
        loss = float(trainer.callback_metrics["train_loss"])
        print(f"finished at step {trainer.global_step}, loss {loss:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
