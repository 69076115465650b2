"""A user training script run by the launcher: `gaudi3-train --nproc 2 --script regression.py`.

It shows the whole helper API: rank info, device, the batch plan, checkpoint
restore/save (via step_done and finish) and metrics. Any script written this way gets
the launcher's failover, resize and SIGTERM behaviour.
"""

from __future__ import annotations

import argparse

import torch

import gaudi_train


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()

    session = gaudi_train.init(seed=7)
    info = session.rank
    print(
        f"rank {info.rank} of {session.world_size} (local {info.local_rank}) "
        f"on {session.device.device} via {session.device.backend}, "
        f"job {info.job_name!r}, restart {info.restart_count}",
        flush=True,
    )

    torch.manual_seed(0)  # the same initial weights on every rank
    model = session.wrap(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    step = session.restore(model, optimizer)  # 0, or where the last checkpoint left off
    if step:
        print(f"rank {info.rank} restored at step {step}", flush=True)

    true_w = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    batch = session.batch
    while step < args.steps:
        step += 1
        optimizer.zero_grad()
        for _ in range(batch.accumulation_steps):
            x = torch.randn(batch.micro_batch, 4).to(session.device.torch_device())
            loss = torch.nn.functional.mse_loss(model(x), x @ true_w.T)
            (loss / batch.accumulation_steps).backward()
            session.device.mark_step()  # HPU lazy mode: flush after backward (else a no-op)
        optimizer.step()
        session.device.mark_step()  # ... and after the optimizer step
        session.extra["note"] = "user state saved with every checkpoint"
        if session.step_done(step, loss=loss.item()):
            break  # SIGTERM somewhere: the checkpoint of this step is written
    if session.is_main:
        print(f"finished at step {step}, loss {session.last_loss:.4f}", flush=True)
    return session.finish()


if __name__ == "__main__":
    raise SystemExit(main())
