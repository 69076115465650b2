"""A user training script run by the launcher: `gaudi3-train --nproc 2 --script regression.py`.

It shows the whole helper API: rank info, device, the batch plan, checkpoint
restore/save (via step_done and finish), metrics, and `recover` for the operator's
in-place recovery. Any script written this way gets the launcher's failover, resize and
SIGTERM behaviour.
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
    while step < args.steps:
        try:
            batch = session.batch  # a new world may change the accumulation
            optimizer.zero_grad()
            for _ in range(batch.accumulation_steps):
                x = torch.randn(batch.micro_batch, 4).to(session.device.torch_device())
                loss = torch.nn.functional.mse_loss(model(x), x @ true_w.T)
                (loss / batch.accumulation_steps).backward()
                session.device.mark_step()  # HPU lazy mode: flush after backward (else no-op)
            optimizer.step()
            session.device.mark_step()  # ... and after the optimizer step
            session.extra["note"] = "user state saved with every checkpoint"
            stop = session.step_done(step + 1, loss=loss.item())
        except Exception as exc:
            # Under the operator's recovery a peer's failure ends the world, not this
            # process: join the next world with the state kept (re-raised otherwise).
            model = session.recover(exc)
            step = session.step
            print(f"rank {session.rank.rank} continues at step {step}", flush=True)
            continue
        step = session.step
        if stop:
            break  # SIGTERM somewhere: the checkpoint of this step is written
    if session.is_main:
        print(f"finished at step {step}, loss {session.last_loss:.4f}", flush=True)
    return session.finish()


if __name__ == "__main__":
    raise SystemExit(main())
