"""A Hugging Face `Trainer` script run unchanged by the launcher:

    gaudi3-train --nproc 2 --checkpoint-dir /tmp/ckpt --script hf_trainer_tiny.py

A tiny Llama-style causal LM (2 layers, 32-token vocabulary), built from a config with
random weights, learns a synthetic Markov-chain corpus generated here: nothing is
downloaded. It imports nothing from gaudi_train; everything comes from the environment:
- the world: torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT (the Trainer and
  Accelerate read them and start the process group);
- checkpoints: GAUDI3_CHECKPOINT_DIR (the Trainer's output_dir; none when unset),
  GAUDI3_CHECKPOINT_INTERVAL (save_steps), GAUDI3_CHECKPOINT_KEEP (save_total_limit);
- batch: GAUDI3_MICRO_BATCH_SIZE (per_device_train_batch_size) and, when the job sets it,
  GAUDI3_GLOBAL_BATCH_SIZE, kept constant over world sizes by gradient accumulation.

On start it resumes from the newest complete checkpoint-N folder, so a restarted
worker continues at step N. On Gaudi (habana_frameworks importable) it uses
optimum-habana's GaudiTrainer and GaudiTrainingArguments, the documented drop-in
replacements, in the execution mode PT_HPU_LAZY_MODE names (eager unless the job asks
for lazy: `gaudi3-train --hpu-mode lazy`), compiled with hpu_backend when the job says
`--compile`; that path has not been run on Gaudi hardware. Elsewhere: CPU and gloo.
"""

from __future__ import annotations

import os

# Intel's bridge reads PT_HPU_LAZY_MODE once, when it loads, and in Intel's images
# `import torch` loads it (PyTorch's device-backend autoload): so it is settled here,
# before the first import that can pull torch in. gaudi3-train has already exported it
# (--hpu-mode); run on its own, the script gets Intel's default, eager (0). optimum-habana:
# "PT_HPU_LAZY_MODE=0 needs to be set before library is loaded".
os.environ.setdefault("PT_HPU_LAZY_MODE", "0")

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging

VOCAB, SEQ_LEN, SEQUENCES = 32, 32, 4096


class MarkovCorpus(Dataset[dict[str, torch.Tensor]]):
    """Sequences from a fixed random chain where each token has 3 possible successors:
    the loss falls from ln(32) = 3.5 towards ln(3) = 1.1 as the model learns the chain."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        successors = torch.randint(0, VOCAB, (VOCAB, 3), generator=g)
        tokens = torch.empty(SEQUENCES, SEQ_LEN, dtype=torch.long)
        tokens[:, 0] = torch.randint(0, VOCAB, (SEQUENCES,), generator=g)
        for t in range(1, SEQ_LEN):
            pick = torch.randint(0, 3, (SEQUENCES,), generator=g)
            tokens[:, t] = successors[tokens[:, t - 1], pick]
        self.tokens = tokens

    def __len__(self) -> int:
        return SEQUENCES

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=SEQ_LEN,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
    )
    return LlamaForCausalLM(config)


class PrintProgress(TrainerCallback):
    """One plain line per logging step on rank 0 (the Trainer's loss is the mean over ranks)."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            print(f"training from step {state.global_step} on {args.world_size} processes")

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs and "loss" in logs:
            print(f"step {state.global_step} loss {logs['loss']:.4f}", flush=True)


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


def latest_complete_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint-N whose trainer_state.json reads back: the Trainer writes
    that file after the weights and optimizer, so a save cut short by a kill is skipped."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if not match:
            continue
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        found.append((int(match.group(1)), str(path)))
    return max(found)[1] if found else None


def gaudi_arguments(env: dict[str, str] | None = None) -> dict[str, Any]:
    """GaudiTrainingArguments' Gaudi settings: lazy mode only when the bridge was loaded
    in it (optimum-habana's use_lazy_mode defaults to True, which contradicts an eager
    bridge), and torch.compile with hpu_backend when the job asks (eager mode only)."""
    env = dict(os.environ) if env is None else env
    lazy = env.get("PT_HPU_LAZY_MODE", "0") == "1"
    settings: dict[str, Any] = {"use_habana": True, "use_lazy_mode": lazy, "ddp_backend": "hccl"}
    if env.get("GAUDI3_COMPILE", "0") == "1" and not lazy:
        settings |= {"torch_compile": True, "torch_compile_backend": "hpu_backend"}
    return settings


def on_gaudi() -> bool:
    try:
        import habana_frameworks.torch  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--log-every", type=int, default=10)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    hf_logging.disable_progress_bar()  # no per-save progress bars in the pod log

    world = env_int("WORLD_SIZE", 1) or 1
    micro = env_int("GAUDI3_MICRO_BATCH_SIZE", 8) or 8
    accum = accumulation(micro, world)
    ckpt_dir = os.environ.get("GAUDI3_CHECKPOINT_DIR", "").strip() or None
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"global batch {micro * world * accum} = micro {micro} x world {world} "
            f"x accumulation {accum}"
        )

    settings: dict[str, Any] = {
        "output_dir": ckpt_dir or tempfile.mkdtemp(prefix="hf-trainer-"),
        "max_steps": args.max_steps,
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": accum,
        "learning_rate": args.lr,
        "lr_scheduler_type": "constant",  # a resumed run continues at the same rate
        "logging_steps": args.log_every,
        "save_strategy": "steps" if ckpt_dir else "no",
        "save_steps": env_int("GAUDI3_CHECKPOINT_INTERVAL", 100) or 100,
        "save_total_limit": env_int("GAUDI3_CHECKPOINT_KEEP", 3) or 3,
        "ddp_find_unused_parameters": False,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 0,
    }
    if on_gaudi():
        # optimum-habana: the same Trainer API on HPUs, hccl, the mode set above.
        from optimum.habana import (  # type: ignore[import-not-found]
            GaudiConfig,
            GaudiTrainer,
            GaudiTrainingArguments,
        )

        training_args: TrainingArguments = GaudiTrainingArguments(**settings, **gaudi_arguments())
        trainer: Trainer = GaudiTrainer(
            model=tiny_model(),
            gaudi_config=GaudiConfig(),
            args=training_args,
            train_dataset=MarkovCorpus(),
        )
    else:
        training_args = TrainingArguments(**settings, use_cpu=True, ddp_backend="gloo")
        trainer = Trainer(model=tiny_model(), args=training_args, train_dataset=MarkovCorpus())
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; one line is enough
    trainer.add_callback(PrintProgress())

    resume = latest_complete_checkpoint(ckpt_dir) if ckpt_dir else None
    if resume and trainer.is_world_process_zero():
        print(f"resuming from {resume}", flush=True)
    result = trainer.train(resume_from_checkpoint=resume)
    if trainer.is_world_process_zero():
        print(f"finished at step {result.global_step}", flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()  # else gloo's threads abort the process at exit
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
