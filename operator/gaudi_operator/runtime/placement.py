"""Where the operator's workers are: node -> jobs, pod -> job, and the jobs with a worker
no node would take, kept one pod event at a time.

A node's health change, an HPU fault reported for a pod, or the first scale-out node
wakes only the jobs concerned. Found by walking every job's pods, such an event cost
what runs in the cluster (every node's first sighting at start-up walked them all);
found here, it costs the jobs it wakes. Memory is a few strings per worker.
"""

from __future__ import annotations

Key = tuple[str, str]  # (namespace, job name)


class PodPlaces:
    def __init__(self) -> None:
        self._pods: dict[str, tuple[Key, str, str | None, bool]] = {}  # uid -> facts
        self._by_node: dict[str, dict[Key, int]] = {}  # node -> job -> its workers there
        self._by_name: dict[tuple[str, str], Key] = {}  # (namespace, pod) -> job
        self._waiting: dict[Key, int] = {}  # job -> its workers no node would take

    def __len__(self) -> int:
        return len(self._pods)

    def update(
        self, key: Key, uid: str, name: str, node: str | None, unplaced: bool, gone: bool
    ) -> None:
        """One pod event: where the pod is now (`gone` when it was deleted)."""
        if not uid:
            return
        before = self._pods.pop(uid, None)
        if before is not None:
            old_key, old_name, old_node, old_unplaced = before
            self._by_name.pop((old_key[0], old_name), None)
            if old_node:
                _drop(self._by_node, old_node, old_key)
            if old_unplaced:
                _count(self._waiting, old_key, -1)
        if gone:
            return
        self._pods[uid] = (key, name, node, unplaced)
        self._by_name[(key[0], name)] = key
        if node:
            _count(self._by_node.setdefault(node, {}), key, 1)
        if unplaced:
            _count(self._waiting, key, 1)

    def jobs_on_node(self, node: str) -> list[Key]:
        return list(self._by_node.get(node, {}))

    def job_of(self, namespace: str, pod: str) -> Key | None:
        return self._by_name.get((namespace, pod))

    def jobs_waiting(self) -> list[Key]:
        """Jobs with a worker the scheduler could not place."""
        return list(self._waiting)


def _count(counts: dict[Key, int], key: Key, delta: int) -> None:
    left = counts.get(key, 0) + delta
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def _drop(by_node: dict[str, dict[Key, int]], node: str, key: Key) -> None:
    jobs = by_node.get(node)
    if jobs is None:
        return
    _count(jobs, key, -1)
    if not jobs:
        del by_node[node]
