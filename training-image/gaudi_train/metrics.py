"""The training metrics every worker process serves for Prometheus.

Names and labels are a contract with the operator (docs/architecture.md): stall
detection reads `gaudi3_train_step`, the autoscaler sums
`gaudi3_train_samples_per_second` over ranks. Change them only together.
"""

from __future__ import annotations

import collections
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

LABELS = ("gtj", "gtj_namespace", "rank")
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Throughput is averaged over this many recent steps: smooth, yet quick to show a resize.
THROUGHPUT_WINDOW = 10


class TrainingMetrics:
    """One process's metrics, in their own registry so tests can create several."""

    def __init__(self, job: str, namespace: str, rank: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"gtj": job, "gtj_namespace": namespace, "rank": str(rank)}

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, LABELS, registry=self.registry).labels(**labels)

        self.step = gauge(
            "gaudi3_train_step", "Optimizer steps completed (global, resumes from checkpoint)."
        )
        self.samples = Counter(
            "gaudi3_train_samples_total",
            "Samples processed by this rank.",
            LABELS,
            registry=self.registry,
        ).labels(**labels)
        self.samples_per_second = gauge(
            "gaudi3_train_samples_per_second", "This rank's recent throughput in samples/s."
        )
        self.step_seconds = Histogram(
            "gaudi3_train_step_seconds",
            "Time per optimizer step.",
            LABELS,
            buckets=STEP_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self.loss = gauge("gaudi3_train_loss", "Last training loss.")
        self.world_size = gauge("gaudi3_train_world_size", "Processes in the current world.")
        self.restarts = gauge("gaudi3_train_restarts", "torchrun restarts seen by this worker.")
        self.last_checkpoint_step = gauge(
            "gaudi3_train_last_checkpoint_step", "Step of the last complete checkpoint."
        )
        self.last_checkpoint_timestamp = gauge(
            "gaudi3_train_last_checkpoint_timestamp_seconds",
            "Unix time the last complete checkpoint was written.",
        )
        self._recent: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=THROUGHPUT_WINDOW
        )
        self.port: int | None = None

    def serve(self, port: int, address: str = "") -> int | None:
        """Serve /metrics on `port` (every interface unless `address` names one); a busy
        port is logged, never fatal to training."""
        try:
            server, _thread = start_http_server(
                port, addr=address or "0.0.0.0", registry=self.registry
            )
        except OSError as exc:
            log.warning("metrics endpoint not started on port %d: %s", port, exc)
            return None
        self.port = int(server.server_address[1])
        return self.port

    def record_step(self, step: int, samples: int, seconds: float, loss: float) -> None:
        """One optimizer step finished on this rank."""
        self.step.set(step)
        self.samples.inc(samples)
        self.step_seconds.observe(seconds)
        self.loss.set(loss)
        self._recent.append((samples, seconds))
        total_time = sum(s for _, s in self._recent)
        if total_time > 0:
            self.samples_per_second.set(sum(n for n, _ in self._recent) / total_time)

    def record_checkpoint(self, step: int, timestamp: float | None = None) -> None:
        self.last_checkpoint_step.set(step)
        self.last_checkpoint_timestamp.set(time.time() if timestamp is None else timestamp)
