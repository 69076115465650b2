"""The environment contract between the operator, the launcher and each worker process.

The operator sets PET_*, MASTER_* and GAUDI3_* on every worker container (see
docs/architecture.md); torchrun adds RANK, LOCAL_RANK, WORLD_SIZE ... to each process.
No torch import here: the launcher reads this before torch is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from gaudi_train import hpu_mode as modes

DEFAULT_METRICS_PORT = 9400
DEFAULT_CHECKPOINT_INTERVAL = 100
DEFAULT_CHECKPOINT_KEEP = 3
DEFAULT_MICRO_BATCH = 8

# Worker exit codes the operator's failure rules can match on.
EXIT_CONFIG_ERROR = 2  # bad settings: retrying cannot help
EXIT_PEER_STOPPED = 75  # a peer was told to stop; checkpointed, safe to restart (EX_TEMPFAIL)
# A worker whose collective failed because a peer went away (operator-managed recovery):
# a consequence of another failure, never its cause.
EXIT_WORLD_BROKEN = 76
DEFAULT_LEAVE_TIMEOUT = 30.0


class EnvError(ValueError):
    """An environment variable has a value the launcher cannot use."""


def _int(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise EnvError(f"{name}={raw!r} is not an integer") from None


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise EnvError(f"{name}={raw!r}: use 1 or 0")


@dataclass(frozen=True)
class JobSettings:
    """GAUDI3_* settings, read by the launcher and exported again to every worker."""

    job_name: str = "local"
    namespace: str = ""
    worker_index: int = 0
    generation: int = 0
    checkpoint_dir: str | None = None
    checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL
    checkpoint_keep: int = DEFAULT_CHECKPOINT_KEEP
    global_batch: int | None = None
    micro_batch: int = DEFAULT_MICRO_BATCH
    # None disables the endpoint; each process serves on metrics_port + LOCAL_RANK.
    metrics_port: int | None = DEFAULT_METRICS_PORT
    # Empty listens on the pod IP when known (GAUDI3_POD_IP), else on every interface;
    # tests use 127.0.0.1.
    metrics_address: str = ""
    device: str = "auto"
    # Intel's HPU execution mode, eager (its default) or lazy: see gaudi_train.hpu_mode.
    hpu_mode: str = modes.DEFAULT
    # torch.compile the model with the device's backend (hpu_backend on Gaudi).
    compile: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> JobSettings:
        env = os.environ if env is None else env
        port_raw = env.get("GAUDI3_METRICS_PORT", "").strip().lower()
        port: int | None
        if port_raw in ("off", "none", "disabled"):
            port = None
        else:
            port = _int(env, "GAUDI3_METRICS_PORT", DEFAULT_METRICS_PORT)
        device = env.get("GAUDI3_DEVICE", "auto").strip().lower() or "auto"
        if device not in ("auto", "hpu", "cuda", "cpu"):
            raise EnvError(f"GAUDI3_DEVICE={device!r}: use auto, hpu, cuda or cpu")
        try:
            mode = modes.resolve(env.get(modes.SETTING), env)
        except modes.ModeError as exc:
            raise EnvError(str(exc)) from None
        return cls(
            job_name=env.get("GAUDI3_JOB_NAME", "").strip() or "local",
            namespace=env.get("GAUDI3_NAMESPACE", "").strip(),
            worker_index=_int(env, "GAUDI3_WORKER_INDEX", 0) or 0,
            generation=_int(env, "GAUDI3_GENERATION", 0) or 0,
            checkpoint_dir=env.get("GAUDI3_CHECKPOINT_DIR", "").strip() or None,
            checkpoint_interval=_int(env, "GAUDI3_CHECKPOINT_INTERVAL", DEFAULT_CHECKPOINT_INTERVAL)
            or DEFAULT_CHECKPOINT_INTERVAL,
            checkpoint_keep=_int(env, "GAUDI3_CHECKPOINT_KEEP", DEFAULT_CHECKPOINT_KEEP)
            or DEFAULT_CHECKPOINT_KEEP,
            global_batch=_int(env, "GAUDI3_GLOBAL_BATCH_SIZE", None),
            micro_batch=_int(env, "GAUDI3_MICRO_BATCH_SIZE", DEFAULT_MICRO_BATCH)
            or DEFAULT_MICRO_BATCH,
            metrics_port=port,
            # With host networking pods share one port space: listen on our own IP only.
            metrics_address=env.get("GAUDI3_METRICS_ADDRESS", "").strip()
            or env.get("GAUDI3_POD_IP", "").strip(),
            device=device,
            hpu_mode=mode,
            compile=_flag(env, "GAUDI3_COMPILE"),
        )

    def to_env(self) -> dict[str, str]:
        """The variables a worker process needs to rebuild these settings."""
        env = {
            "GAUDI3_JOB_NAME": self.job_name,
            "GAUDI3_NAMESPACE": self.namespace,
            "GAUDI3_WORKER_INDEX": str(self.worker_index),
            "GAUDI3_GENERATION": str(self.generation),
            "GAUDI3_CHECKPOINT_DIR": self.checkpoint_dir or "",
            "GAUDI3_CHECKPOINT_INTERVAL": str(self.checkpoint_interval),
            "GAUDI3_CHECKPOINT_KEEP": str(self.checkpoint_keep),
            "GAUDI3_GLOBAL_BATCH_SIZE": "" if self.global_batch is None else str(self.global_batch),
            "GAUDI3_MICRO_BATCH_SIZE": str(self.micro_batch),
            "GAUDI3_METRICS_PORT": "off" if self.metrics_port is None else str(self.metrics_port),
            "GAUDI3_METRICS_ADDRESS": self.metrics_address,
            "GAUDI3_DEVICE": self.device,
            modes.SETTING: self.hpu_mode,
            "GAUDI3_COMPILE": "1" if self.compile else "0",
        }
        return env


@dataclass(frozen=True)
class ElasticSettings:
    """torchrun's rendezvous settings: PET_* and MASTER_* as the operator sets them."""

    nnodes: str = "1"
    nproc_per_node: int | None = None
    rdzv_backend: str = "c10d"
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None
    max_restarts: int = 3
    master_addr: str | None = None
    master_port: int | None = None
    # The pod's IP (downward API status.podIP): every store listens there, not on 0.0.0.0.
    pod_ip: str | None = None
    worker_index: int = 0  # worker 0 hosts the rendezvous store
    # Worker pods the operator created this pod's world with (workers.replicas then): a
    # rendezvous round closes once that many joined and nobody waits to join.
    world_pods: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ElasticSettings:
        env = os.environ if env is None else env
        settings = cls(
            nnodes=env.get("PET_NNODES", "").strip() or "1",
            nproc_per_node=_int(env, "PET_NPROC_PER_NODE", None),
            rdzv_backend=env.get("PET_RDZV_BACKEND", "").strip() or "c10d",
            rdzv_endpoint=env.get("PET_RDZV_ENDPOINT", "").strip() or None,
            rdzv_id=env.get("PET_RDZV_ID", "").strip() or None,
            max_restarts=_int(env, "PET_MAX_RESTARTS", 3) or 0,
            master_addr=env.get("MASTER_ADDR", "").strip() or None,
            master_port=_int(env, "MASTER_PORT", None),
            pod_ip=env.get("GAUDI3_POD_IP", "").strip() or None,
            worker_index=_int(env, "GAUDI3_WORKER_INDEX", 0) or 0,
            world_pods=_int(env, "GAUDI3_WORLD_PODS", None),
        )
        if settings.world_pods is not None and settings.world_pods < 1:
            raise EnvError(f"GAUDI3_WORLD_PODS={settings.world_pods}: expected at least 1")
        settings.node_range()  # validate early, with the variable's name in the message
        return settings

    @property
    def multi_node(self) -> bool:
        """True inside a GaudiTrainingJob pod: a rendezvous endpoint names worker 0."""
        return self.rdzv_endpoint is not None

    def node_range(self) -> tuple[int, int]:
        """(min, max) worker pods from PET_NNODES, which is `n` or `min:max`."""
        parts = self.nnodes.split(":")
        try:
            low, high = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, -1)
        except ValueError:
            low, high = 0, -1
        if low < 1 or high < low:
            raise EnvError(
                f"PET_NNODES={self.nnodes!r}: expected N or MIN:MAX with 1 <= MIN <= MAX"
            )
        return low, high


@dataclass(frozen=True)
class RankInfo:
    """Who this process is, from the variables torchrun sets on every worker."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    restart_count: int = 0
    run_id: str = ""
    job_name: str = "local"
    namespace: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RankInfo:
        env = os.environ if env is None else env
        return cls(
            rank=_int(env, "RANK", 0) or 0,
            local_rank=_int(env, "LOCAL_RANK", 0) or 0,
            world_size=_int(env, "WORLD_SIZE", 1) or 1,
            local_world_size=_int(env, "LOCAL_WORLD_SIZE", 1) or 1,
            node_rank=_int(env, "GROUP_RANK", 0) or 0,
            restart_count=_int(env, "TORCHELASTIC_RESTART_COUNT", 0) or 0,
            run_id=env.get("TORCHELASTIC_RUN_ID", ""),
            job_name=env.get("GAUDI3_JOB_NAME", "").strip() or "local",
            namespace=env.get("GAUDI3_NAMESPACE", "").strip(),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class ControlSettings:
    """Operator-managed recovery (gaudi_train.managed): on when GAUDI3_CONTROL_PORT is set.

    Without it the launcher runs torchrun, which restarts failed workers by itself (the
    fallback for a workstation, or an operator that does not speak the protocol)."""

    port: int | None = None
    address: str = ""  # where the control endpoint listens: GAUDI3_POD_IP by default
    token: str = ""
    spare: bool = False
    in_place_generation: int = 0
    pod_name: str = ""
    node_name: str = ""
    leave_timeout: float = DEFAULT_LEAVE_TIMEOUT
    peer_state: bool = True  # new ranks take their state from a surviving replica

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ControlSettings:
        env = os.environ if env is None else env
        port = _int(env, "GAUDI3_CONTROL_PORT", None)
        generation = _int(env, "GAUDI3_IN_PLACE_GENERATION", 0) or 0
        if generation < 0:
            raise EnvError(f"GAUDI3_IN_PLACE_GENERATION={generation}: expected 0 or more")
        raw_timeout = env.get("GAUDI3_LEAVE_TIMEOUT", "").strip()
        try:
            leave_timeout = float(raw_timeout) if raw_timeout else DEFAULT_LEAVE_TIMEOUT
        except ValueError:
            raise EnvError(f"GAUDI3_LEAVE_TIMEOUT={raw_timeout!r} is not a number") from None
        peer_state = env.get("GAUDI3_PEER_STATE", "").strip()
        settings = cls(
            port=port,
            address=env.get("GAUDI3_CONTROL_ADDRESS", "").strip()
            or env.get("GAUDI3_POD_IP", "").strip(),
            token=env.get("GAUDI3_CONTROL_TOKEN", "").strip(),
            spare=_flag(env, "GAUDI3_SPARE"),
            in_place_generation=generation,
            pod_name=env.get("GAUDI3_POD_NAME", "").strip(),
            node_name=env.get("GAUDI3_NODE_NAME", "").strip(),
            leave_timeout=leave_timeout,
            peer_state=True if not peer_state else _flag(env, "GAUDI3_PEER_STATE"),
        )
        if settings.port is None and settings.spare:
            raise EnvError("GAUDI3_SPARE=1 needs GAUDI3_CONTROL_PORT: a spare waits to be told")
        if settings.port is not None and not settings.token:
            raise EnvError(
                "GAUDI3_CONTROL_PORT is set but GAUDI3_CONTROL_TOKEN is empty: the control "
                "endpoint restarts and stops training, so it never runs without a token"
            )
        return settings

    @property
    def managed(self) -> bool:
        return self.port is not None
