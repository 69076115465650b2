"""Leader-election settings: timings under which two leaders could act are refused before
anything starts, with the flags named; the Lease's namespace defaults to the pod's own."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gaudi_operator.cli.main import app
from gaudi_operator.runtime import leader
from gaudi_operator.runtime.leader import LeaderElectionSettings

pytestmark = pytest.mark.unit


def test_the_defaults_are_valid() -> None:
    le = LeaderElectionSettings(namespace="x")
    assert (le.lease_duration, le.renew_deadline, le.retry_period) == (15, 10.0, 2.0)
    le.validate()


@pytest.mark.parametrize(
    ("lease", "renew", "retry"),
    [(10, 10, 2), (10, 7, 6), (10, 7, 2), (6, 4, 1)],
)
def test_inconsistent_timings_are_refused(lease: int, renew: float, retry: float) -> None:
    le = LeaderElectionSettings(
        namespace="x", lease_duration=lease, renew_deadline=renew, retry_period=retry
    )
    with pytest.raises(ValueError):
        le.validate()


def test_gaudi3_operator_names_the_flags_of_unsafe_timings() -> None:
    # The old defaults: a deposed leader could act past the moment a standby takes over.
    args = ["--lease-duration", "10", "--renew-deadline", "7", "--retry-period", "2"]
    out = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["operator", *args, "--metrics-port", "0"])
    assert out.exit_code == 2
    assert "--renew-deadline (7 s) + 2 x --retry-period (2 s) = 11 s" in out.output
    assert "must be below --lease-duration (10 s)" in out.output


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
