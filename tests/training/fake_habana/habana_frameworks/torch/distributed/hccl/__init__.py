"""Fake `habana_frameworks.torch.distributed.hccl`: importing it registers the "hccl"
process-group backend, as Intel's does. Here it records the group and hands the work to
gloo on the CPU."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch.distributed as dist

from habana_frameworks import _fake

_fake.record("import", module=__name__, env=_fake.environment())


def _create(store: Any, rank: int, size: int, timeout: timedelta) -> Any:
    _fake.record("process_group", backend="hccl", group_rank=rank, group_size=size)
    return dist.ProcessGroupGloo(store, rank, size, timeout)


if "hccl" not in dist.Backend.backend_list:
    dist.Backend.register_backend("hccl", _create, devices=["cpu"])
