"""The built-in reference workload: train the tiny LM on the synthetic corpus.

Importing it is torch-free: the launcher reads `WorkloadConfig` for its flags before it
imports torch, and the workers import the rest (gaudi_train.prefork) while it rendezvous.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gaudi_train.model import ModelConfig
    from gaudi_train.session import Session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkloadConfig:
    """What the launcher forwards to every worker as command-line flags."""

    max_steps: int = 100
    lr: float = 3e-3
    seq_len: int = 64
    vocab_size: int = 64
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    seed: int = 1234
    log_every: int = 10

    def to_argv(self) -> list[str]:
        return [f"--{k.replace('_', '-')}={v}" for k, v in asdict(self).items()]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in fields(cls):
            flag = f"--{f.name.replace('_', '-')}"
            kind = float if f.type in (float, "float") else int
            parser.add_argument(flag, type=kind, default=f.default, dest=f.name)

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> WorkloadConfig:
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls)})

    def model_config(self) -> ModelConfig:
        from gaudi_train.model import ModelConfig

        return ModelConfig(self.vocab_size, self.seq_len, self.d_model, self.n_heads, self.n_layers)


@dataclass
class StepTimes:
    """Per-step wall times after warm-up, for the benchmark."""

    seconds: list[float]


def train(
    cfg: WorkloadConfig, session: Session, warmup_steps: int = 0, times: StepTimes | None = None
) -> int:
    """Run optimizer steps up to `cfg.max_steps` (resuming); return the exit code.

    Under the operator's recovery a world can end mid-run while this process lives on:
    `session.recover` joins the next world (keeping model and optimizer) and training
    continues from the step that world resumed at; otherwise the error stops the process.
    """
    import torch

    from gaudi_train.data import CorpusSpec, GlobalBatchSampler, SyntheticCorpus
    from gaudi_train.model import TinyLM

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    corpus = SyntheticCorpus(CorpusSpec(cfg.vocab_size, cfg.seq_len, seed=cfg.seed))
    sampler = GlobalBatchSampler(len(corpus), seed=cfg.seed)
    model = session.wrap(TinyLM(cfg.model_config()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    step = session.restore(model, optimizer)
    log_plan(session)
    while step < cfg.max_steps:
        started = time.perf_counter()
        try:
            stop = train_step(session, model, optimizer, corpus, sampler, step)
        except Exception as exc:
            model = session.recover(exc)  # re-raised unless the world ended under the operator
            step = session.step
            log_plan(session)
            continue
        step = session.step
        if times is not None and step > warmup_steps:
            times.seconds.append(time.perf_counter() - started)
        if session.is_main and (step % cfg.log_every == 0 or step == cfg.max_steps or stop):
            log.info("step %d loss %.6f", step, session.last_loss)
        if stop:
            log.info("stopping at step %d: checkpoint saved", step)
            break
    return session.finish()


def log_plan(session: Session) -> None:
    batch, device = session.batch, session.device
    if session.is_main:
        log.info(
            "training on %s (%s): global batch %d = micro %d x world %d x accumulation %d",
            device.device,
            device.backend,
            batch.global_batch,
            batch.micro_batch,
            batch.world_size,
            batch.accumulation_steps,
        )


def train_step(
    session: Session, model: Any, optimizer: Any, corpus: Any, sampler: Any, step: int
) -> bool:
    """One optimizer step after `step` (the global batch of step `step`); True = stop."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from gaudi_train.device import uncompiled

    batch, rank, device = session.batch, session.rank.rank, session.device
    target = torch.device(device.device)
    inner = uncompiled(model)  # with --compile, DDP sits inside torch.compile's wrapper
    ddp = isinstance(inner, DistributedDataParallel)
    optimizer.zero_grad(set_to_none=True)
    # Summed on the device: one host sync per step, not per micro batch (HPU lazy mode).
    loss_sum = torch.zeros((), device=target)
    for micro in range(batch.accumulation_steps):
        idx = sampler.indices(
            step, micro, rank, batch.world_size, batch.micro_batch, batch.global_batch
        )
        tokens, targets = (t.to(target) for t in corpus.batch(idx))
        last = micro == batch.accumulation_steps - 1
        # Gradients are all-reduced once per optimizer step, on the last micro batch.
        sync = contextlib.nullcontext() if (last or not ddp) else inner.no_sync()
        with sync:
            with device.autocast():
                logits = model(tokens)
            loss = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1)
            )
            (loss / batch.accumulation_steps).backward()
        # Intel (lazy mode): mark_step() after backward and after optimizer.step()
        # (Model-References torchvision train.py); a no-op in eager mode.
        device.mark_step()
        loss_sum += loss.detach()
    optimizer.step()
    device.mark_step()
    mean_loss = loss_sum.item() / batch.accumulation_steps
    return session.step_done(step + 1, mean_loss)
