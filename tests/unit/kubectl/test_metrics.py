"""Each rank's numbers as `kubectl gtj` reads them: parsed from the launcher's own /metrics
text (the real gaudi_train.metrics registry, not a hand-written sample) or from a
Prometheus vector, and folded the way the operator reads a job."""

from __future__ import annotations

from prometheus_client import generate_latest

from gaudi_kubectl.metrics import (
    JobProgress,
    RankReading,
    Target,
    from_endpoints,
    from_prometheus,
    parse_exposition,
    scrape_targets,
)
from gaudi_train.metrics import TrainingMetrics


def served(
    rank: int, steps: int, *, samples: int = 8, seconds: float = 0.5, loss: float = 3.5
) -> str:
    """The text a rank's endpoint serves after `steps` optimizer steps."""
    m = TrainingMetrics("tiny", "team", rank)
    m.world_size.set(2)
    for step in range(1, steps + 1):
        m.record_step(step, samples, seconds, loss)
    if steps >= 5:
        m.record_checkpoint(5)
    return generate_latest(m.registry).decode()


def test_a_ranks_endpoint_gives_its_step_loss_throughput_and_world() -> None:
    (r,) = parse_exposition(served(1, 7, samples=8, seconds=0.5, loss=3.25), pod="tiny-worker-1")
    assert r == RankReading(
        rank=1,
        pod="tiny-worker-1",
        step=7,
        loss=3.25,
        samples_per_second=16.0,
        world_size=2,
        last_checkpoint_step=5,
    )


def test_before_its_first_step_a_rank_has_a_step_but_no_loss_or_throughput() -> None:
    # A resumed world reports the step it resumed from; its gauges still hold 0.
    m = TrainingMetrics("tiny", "team", 0)
    m.step.set(40)
    (r,) = parse_exposition(generate_latest(m.registry).decode())
    assert (r.step, r.loss, r.samples_per_second) == (40, None, None)


def test_a_job_sums_throughput_over_ranks_and_takes_the_highest_step() -> None:
    a, b = Target("team", "tiny-worker-0", 9400), Target("team", "tiny-worker-1", 9400)
    p = from_endpoints({a: served(0, 9, seconds=0.25), b: served(1, 8, seconds=0.5)})
    assert [r.rank for r in p.ranks] == [0, 1]
    assert (p.step, p.world_size, p.loss) == (9, 2, 3.5)
    assert p.samples_per_second == 32.0 + 16.0
    assert p.endpoints == 2 and p.unreachable == ()


def test_an_endpoint_that_does_not_answer_is_named_and_the_others_still_count() -> None:
    a, b = Target("team", "tiny-worker-0", 9400), Target("team", "tiny-worker-1", 9400)
    p = from_endpoints({a: served(0, 3), b: None})
    assert [r.rank for r in p.ranks] == [0] and p.unreachable == ("tiny-worker-1:9400",)
    assert JobProgress().step is None and JobProgress().samples_per_second is None


def test_prometheus_vectors_fold_into_each_jobs_ranks() -> None:
    def sample(name: str, job: str, rank: int, value: float) -> dict[str, object]:
        labels = {"__name__": name, "gtj": job, "gtj_namespace": "team", "rank": str(rank)}
        return {"metric": {**labels, "pod": f"{job}-worker-{rank}"}, "value": [1.0, str(value)]}

    result = [
        sample("gaudi3_train_step", "tiny", 0, 12),
        sample("gaudi3_train_step", "tiny", 1, 12),
        sample("gaudi3_train_samples_total", "tiny", 0, 96),
        sample("gaudi3_train_samples_total", "tiny", 1, 96),
        sample("gaudi3_train_samples_per_second", "tiny", 0, 20.5),
        sample("gaudi3_train_samples_per_second", "tiny", 1, 19.5),
        sample("gaudi3_train_loss", "tiny", 0, 2.5),
        sample("gaudi3_train_loss", "tiny", 1, 2.5),
        sample("gaudi3_train_step", "other", 0, 3),  # no samples yet: a step, no rate
        sample("gaudi3_train_samples_per_second", "other", 0, 0),
        {"metric": {"__name__": "gaudi3_train_step"}, "value": [1.0, "5"]},  # not a job's
    ]
    found = from_prometheus(result)
    assert set(found) == {("team", "tiny"), ("team", "other")}
    tiny = found[("team", "tiny")]
    assert [r.pod for r in tiny.ranks] == ["tiny-worker-0", "tiny-worker-1"]
    assert (tiny.step, tiny.loss, tiny.samples_per_second) == (12, 2.5, 40.0)
    other = found[("team", "other")]
    assert (other.step, other.samples_per_second) == (3, None)


def pod(
    name: str, *, phase: str = "Running", ip: str | None = "127.0.20.1", **extra: object
) -> dict:
    notes = {"prometheus.io/scrape": "true", "prometheus.io/port": "9400"}
    body: dict = {
        "metadata": {"name": name, "namespace": "team", "annotations": notes},
        "spec": {
            "containers": [
                {"name": "worker", "env": [{"name": "PET_NPROC_PER_NODE", "value": "2"}]}
            ]
        },
        "status": {"phase": phase, **({"podIP": ip} if ip else {})},
    }
    body["metadata"].update(extra)
    return body


def test_every_local_rank_of_a_running_worker_is_scraped_port_plus_local_rank() -> None:
    pods = [
        pod("tiny-worker-1"),
        pod("tiny-worker-0"),
        pod("tiny-worker-2", phase="Pending", ip=None),  # not running: nothing to read
        pod("tiny-worker-3", deletionTimestamp="2025-01-01T00:00:00Z"),  # old world
        pod("tiny-worker-4", phase="Succeeded"),
    ]
    assert scrape_targets(pods) == [
        Target("team", "tiny-worker-0", 9400),
        Target("team", "tiny-worker-0", 9401),
        Target("team", "tiny-worker-1", 9400),
        Target("team", "tiny-worker-1", 9401),
    ]
    # Without PET_NPROC_PER_NODE in the pod, the job's hpusPerWorker says how many.
    bare = pod("tiny-worker-0")
    bare["spec"]["containers"][0]["env"] = []
    assert len(scrape_targets([bare], hpus_per_worker=8)) == 8
    quiet = pod("tiny-worker-0")
    quiet["metadata"]["annotations"] = {}
    assert scrape_targets([quiet]) == []


def test_loopback_pods_are_read_directly_only_when_the_api_server_is_on_this_machine() -> None:
    # The API server refuses to proxy to a loopback pod IP; on a one-machine cluster the
    # address is this machine's, anywhere else it would be someone else's.
    local = pod("tiny-worker-0", ip="127.0.20.4")
    assert {t.direct for t in scrape_targets([local], same_machine=True)} == {"127.0.20.4"}
    assert {t.direct for t in scrape_targets([local], same_machine=False)} == {None}
    routable = pod("tiny-worker-0", ip="192.0.2.10")  # TEST-NET-1: never dialled here
    assert {t.direct for t in scrape_targets([routable], same_machine=True)} == {None}
