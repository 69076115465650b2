"""Small pure helpers of the effect layer."""

from __future__ import annotations

import pytest

from gaudi_operator.jobs.reconciler import status_patch, summarize_indices
from gaudi_operator.runtime.controller import Written

pytestmark = pytest.mark.unit


def test_status_patch_sends_only_changes_and_nulls_removed_keys() -> None:
    old = {"phase": "Running", "startTime": "t", "restarts": 0}
    new = {"phase": "Suspended", "restarts": 0}
    assert status_patch(old, new) == {"phase": "Suspended", "startTime": None}
    assert status_patch(new, new) == {}


def test_indices_are_summarised_as_ranges() -> None:
    assert summarize_indices([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    assert summarize_indices([3]) == "3"
    assert summarize_indices([]) == ""


def test_our_write_is_read_until_the_index_catches_up_without_ordering_versions() -> None:
    def job(uid: str, rv: str) -> dict:
        return {"metadata": {"uid": uid, "resourceVersion": rv}}

    # We read version "x9" and wrote "y1" (opaque strings: "x9" > "y1" means nothing).
    ours = Written.after(job("a", "x9"), job("a", "y1"), None)
    assert ours.pick(job("a", "x9")) == job("a", "y1")  # the index still lags behind
    assert ours.pick(job("a", "y1")) is None  # caught up: read the index
    assert ours.pick(job("a", "a0")) is None  # someone else wrote after us
    assert ours.pick(job("b", "x9")) is None  # deleted and re-created under the same name
    # A second write before the index caught up: both earlier versions mean "lagging".
    again = Written.after(job("a", "y1"), job("a", "z2"), ours)
    assert again.pick(job("a", "x9")) == job("a", "z2")
    assert again.pick(job("a", "y1")) == job("a", "z2")
    # A pass that committed a restart's intent ("i5") before its status write ("s6"): the
    # index showing the intent alone is behind, not newer.
    both = Written.after(job("a", "z2"), job("a", "s6"), None, ["i5"])
    assert both.pick(job("a", "i5")) == job("a", "s6")
    assert both.pick(job("a", "s6")) is None


def test_the_status_compared_for_staleness_leaves_out_the_autoscalers_part() -> None:
    from gaudi_operator.api import reconciler_part

    read = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True", "reason": "AllWorkersReady"}],
    }
    theirs = {
        **read,
        "lastScale": {"from": 2, "to": 4},
        "conditions": [
            *read["conditions"],
            {"type": "MetricsUnavailable", "status": "True", "reason": "Unreachable"},
        ],
    }
    assert reconciler_part(theirs) == reconciler_part(read)
    ours_later = {
        "phase": "Restarting",
        "conditions": [{"type": "Restarting", "status": "True", "reason": "NodeLost"}],
    }
    assert reconciler_part(ours_later) != reconciler_part(read)


def test_condition_changes_are_rebased_onto_another_writers_conditions() -> None:
    from gaudi_operator.jobs.reconciler import merge_conditions

    ready_false = {"type": "Ready", "status": "False", "reason": "WorkersStarting"}
    ready_true = {"type": "Ready", "status": "True", "reason": "AllWorkersReady"}
    restarting = {"type": "Restarting", "status": "True", "reason": "Error"}
    theirs = {"type": "MetricsUnavailable", "status": "True", "reason": "Unreachable"}
    # This pass read [Ready=False, Restarting], decided [Ready=True]; meanwhile the
    # autoscaler added MetricsUnavailable.
    merged = merge_conditions(
        [ready_false, restarting], [ready_true], [ready_false, restarting, theirs]
    )
    assert merged == [ready_true, theirs]


def test_a_new_last_failure_replaces_the_old_one_whole() -> None:
    # An OOM kill, then a lost node: the merge patch must drop the OOM's exit code.
    old = {"lastFailure": {"reason": "OOMKilled", "exitCode": 137, "pod": "j-worker-1"}}
    new = {"lastFailure": {"reason": "NodeLost", "pod": "j-worker-0", "node": "n3"}}
    patch = status_patch(old, new)
    assert patch == {
        "lastFailure": {"reason": "NodeLost", "pod": "j-worker-0", "node": "n3", "exitCode": None}
    }
    # Applied as the API server applies a JSON merge patch (RFC 7386), nothing mixes.
    assert apply_merge_patch(old, patch) == new


def apply_merge_patch(target: dict, patch: dict) -> dict:  # type: ignore[type-arg]
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = apply_merge_patch(out[key], value)
        else:
            out[key] = value
    return out
