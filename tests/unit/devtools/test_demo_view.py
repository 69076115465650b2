"""The demo's live view of real training: the ranks' metrics folded the way the operator
reads them, and a dash where nothing was measured yet."""

from __future__ import annotations

from gaudi_devtools.demo import progress_cells
from gaudi_devtools.realtraining import WorldProgress, world_progress


def rank(n: int, step: int, sps: float, samples: int, loss: float = 3.9745) -> str:
    labels = f'gtj="train",gtj_namespace="default",rank="{n}"'
    return (
        "# TYPE gaudi3_train_step gauge\n"
        f"gaudi3_train_step{{{labels}}} {step}\n"
        "# TYPE gaudi3_train_samples counter\n"
        f"gaudi3_train_samples_total{{{labels}}} {samples}\n"
        "# TYPE gaudi3_train_loss gauge\n"
        f"gaudi3_train_loss{{{labels}}} {loss}\n"
        "# TYPE gaudi3_train_samples_per_second gauge\n"
        f"gaudi3_train_samples_per_second{{{labels}}} {sps}\n"
        "# TYPE gaudi3_train_world_size gauge\n"
        f"gaudi3_train_world_size{{{labels}}} 2\n"
    )


def test_live_row_sums_throughput_over_ranks_and_shows_dashes_until_measured() -> None:
    world = world_progress([rank(0, 14, 12.5, 112), rank(1, 13, 12.0, 104)])
    assert world == WorldProgress(
        ranks=2, world_size=2, step=14, loss=3.9745, samples_per_second=24.5
    )
    assert progress_cells({"phase": "Running", "restarts": 1}, world) == [
        "Running",
        "1",
        "2",
        "14",
        "3.9745",
        "24.5",
    ]
    # A resumed world before its first step: the step it resumed from, no loss or rate.
    resumed = world_progress([rank(0, 20, 0, 0, loss=0), rank(1, 20, 0, 0, loss=0)])
    assert progress_cells({"phase": "Running", "restarts": 1}, resumed)[2:] == [
        "2",
        "20",
        "-",
        "-",
    ]
    assert progress_cells({"phase": "Restarting"}, world_progress([])) == [
        "Restarting",
        "0",
        "-",
        "-",
        "-",
        "-",
    ]
