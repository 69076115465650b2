"""The chart's `gaudi` values reach the operator as its flags (docs/gaudi.md): huge pages
per HPU and the scale-out readiness gate, with Intel's defaults, switchable, and checked."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from gaudi_operator import api
from gaudi_operator.jobs import gaudi
from unit.chart.chart_tools import CHART, helm

pytestmark = pytest.mark.unit


def operator_args(*settings: str) -> list[str]:
    flags = [a for s in settings for a in ("--set", s)]
    docs = yaml.safe_load_all(helm("template", "gaudi", str(CHART), *flags).stdout)
    deploy: Any = next(d for d in docs if d and d["kind"] == "Deployment")
    return deploy["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_defaults_are_intels_and_the_operators_own() -> None:
    args = operator_args()
    assert f"--hugepages-mi-per-hpu={gaudi.HUGEPAGES_MI_PER_HPU}" in args
    assert f"--scale-out-label={api.SCALE_OUT_READY_LABEL}" in args


def test_huge_pages_and_the_label_are_set_from_values() -> None:
    args = operator_args(
        "gaudi.hugepagesMiPerHPU=0", "gaudi.scaleOut.readyLabel=example.com/fabric"
    )
    assert "--hugepages-mi-per-hpu=0" in args
    assert "--scale-out-label=example.com/fabric" in args


def test_the_gate_switched_off_passes_an_empty_label() -> None:
    args = operator_args("gaudi.scaleOut.requireReadyNodes=false")
    assert "--scale-out-label=" in args


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("gaudi.hugepagesMiPerHPU=3625", "'/gaudi/hugepagesMiPerHPU': multipleOf"),
        ("gaudi.hugepagesMiPerHPU=-1", "'/gaudi/hugepagesMiPerHPU': minimum: got -1, want 0"),
        ("gaudi.hugepagesMiPerHPU=3624Mi", "'/gaudi/hugepagesMiPerHPU': got string, want integer"),
        ("gaudi.scaleOut.readyLabel=a b", "'/gaudi/scaleOut/readyLabel': 'a b' does not match"),
        ("gaudi.scaleOut.requireReady=true", "'/gaudi/scaleOut': additional properties"),
        ("gaudi.scaleOut.readyLabel=", "gaudi.scaleOut.readyLabel is empty"),
    ],
)
def test_a_bad_gaudi_value_fails_rendering_and_names_it(setting: str, named: str) -> None:
    out = helm("template", "gaudi", str(CHART), "--set", setting, check=False)
    assert out.returncode != 0, f"--set {setting} was accepted"
    assert named in out.stderr, out.stderr
