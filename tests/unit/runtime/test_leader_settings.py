"""Leader-election settings: refused before anything starts when the library would refuse
them, and the Lease's namespace defaults to the pod's own."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gaudi_operator.cli.main import app
from gaudi_operator.runtime import leader
from gaudi_operator.runtime.leader import LeaderElectionSettings

pytestmark = pytest.mark.unit


def test_the_charts_defaults_are_valid() -> None:
    LeaderElectionSettings(namespace="x").validate()


@pytest.mark.parametrize(
    ("lease", "renew", "retry"),
    [(10, 10, 2), (10, 7, 6), (10, 7, 0.5)],
)
def test_inconsistent_timings_are_refused(lease: int, renew: float, retry: float) -> None:
    le = LeaderElectionSettings(
        namespace="x", lease_duration=lease, renew_deadline=renew, retry_period=retry
    )
    with pytest.raises(ValueError):
        le.validate()


def test_gaudi3_operator_refuses_a_renew_deadline_past_the_lease() -> None:
    out = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, ["operator", "--lease-duration", "5", "--renew-deadline", "7", "--metrics-port", "0"]
    )
    assert out.exit_code == 2
    assert "lease_duration must be greater than renew_deadline" in out.output


def test_the_lease_namespace_is_the_pods_own_else_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leader, "SA_NAMESPACE_FILE", tmp_path / "absent")
    assert leader.default_namespace() == "default"
    sa = tmp_path / "namespace"
    sa.write_text("gaudi-system\n")
    monkeypatch.setattr(leader, "SA_NAMESPACE_FILE", sa)
    assert leader.default_namespace() == "gaudi-system"
    assert LeaderElectionSettings().namespace == "gaudi-system"
