"""Where the workers are, one pod event at a time: the jobs a node, a pod or a new
scale-out node concerns are found without walking every job."""

from __future__ import annotations

from gaudi_operator.runtime.placement import PodPlaces

A, B = ("ns", "a"), ("ns", "b")


def test_jobs_on_a_node_follow_binding_moves_and_deletes() -> None:
    places = PodPlaces()
    places.update(A, "u1", "a-worker-0", None, unplaced=True, gone=False)
    assert places.jobs_on_node("n1") == [] and places.jobs_waiting() == [A]
    places.update(A, "u1", "a-worker-0", "n1", unplaced=False, gone=False)  # bound
    places.update(A, "u2", "a-worker-1", "n1", unplaced=False, gone=False)
    places.update(B, "u3", "b-worker-0", "n1", unplaced=False, gone=False)
    assert places.jobs_waiting() == []
    assert sorted(places.jobs_on_node("n1")) == [A, B]
    places.update(A, "u1", "a-worker-0", "n1", unplaced=False, gone=True)
    assert sorted(places.jobs_on_node("n1")) == [A, B]  # a-worker-1 is still there
    places.update(A, "u2", "a-worker-1", "n1", unplaced=False, gone=True)
    places.update(B, "u3", "b-worker-0", "n1", unplaced=False, gone=True)
    assert places.jobs_on_node("n1") == [] and len(places) == 0


def test_the_same_event_twice_counts_once() -> None:
    places = PodPlaces()
    for _ in range(3):
        places.update(A, "u1", "a-worker-0", "n1", unplaced=False, gone=False)
    places.update(A, "u1", "a-worker-0", "n1", unplaced=False, gone=True)
    assert places.jobs_on_node("n1") == []


def test_a_pod_names_its_job_within_its_namespace() -> None:
    places = PodPlaces()
    places.update(("x", "llama"), "u1", "llama-worker-0", "n1", unplaced=False, gone=False)
    assert places.job_of("x", "llama-worker-0") == ("x", "llama")
    assert places.job_of("y", "llama-worker-0") is None
    places.update(("x", "llama"), "u1", "llama-worker-0", "n1", unplaced=False, gone=True)
    assert places.job_of("x", "llama-worker-0") is None
