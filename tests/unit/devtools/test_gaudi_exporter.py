"""The fixture exporter (gaudi_devtools.gaudi_exporter) serves what Intel's does: the text
of the real exporter's binary for the same cards, zero-fill included; cards handed to pods
as the kubelet does; faults per card; the upstream rate limit — no cluster."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gaudi_devtools.gaudi_exporter import (
    EXTERNAL_PORTS,
    FAMILIES,
    PORT_FAMILY,
    Allocator,
    Card,
    GaudiExporterFleet,
    go_float,
    render,
)

INTEL = Path(__file__).with_name("intel-exporter")


def families(text: str) -> dict[str, list[str]]:
    """The exposition by family: its HELP and TYPE lines and its samples, in order."""
    out: dict[str, list[str]] = {}
    name = ""
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
        elif line.startswith("#") and not line.startswith("# TYPE "):
            continue  # a plain comment (the golden file's header)
        out.setdefault(name, []).append(line)
    return out


def test_the_fixture_serves_what_intels_exporter_serves_for_the_same_cards() -> None:
    # rhlml.json: a healthy card held by a pod, an unreadable one (rhlml's zero-fill: serial
    # "", UUID "na", every number 0, every link down), a free one with ECC rows pending and
    # a scale-out port down. metrics.prom: the real binary's answer for it.
    cards = [Card.from_rhlml(d) for d in json.loads((INTEL / "rhlml.json").read_text())]
    ours = render(cards, {"AN000000": ("team-a", "job-worker-1")}, "gaudi-node-0")
    theirs = families((INTEL / "metrics.prom").read_text())
    assert families(ours) == theirs  # names, HELP (empty), TYPE, labels, order, values
    assert set(theirs) == {*FAMILIES, PORT_FAMILY, "habanalabs_kube_info"}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (41, "41"),
        (221000, "221000"),
        (18e6, "1.8e+07"),
        (137438953472, "1.37438953472e+11"),
        (1e6, "1e+06"),
        (0.5, "0.5"),
        (1.5e-5, "1.5e-05"),
        (float("nan"), "NaN"),
    ],
)
def test_values_are_written_as_go_writes_them(value: float, text: str) -> None:
    assert go_float(value) == text


def pod(
    name: str, hpus: int, uid: str | None = None, phase: str = "Running", created: str = ""
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": uid or name,
            "creationTimestamp": created,
        },
        "spec": {
            "nodeName": "n0",
            "containers": [{"resources": {"limits": {"habana.ai/gaudi": str(hpus)}}}],
        },
        "status": {"phase": phase},
    }


def test_cards_go_to_pods_lowest_first_and_stay_theirs_for_the_pods_life() -> None:
    alloc = Allocator([f"S{i}" for i in range(8)])
    held = alloc.sync([pod("a", 4, created="1"), pod("b", 2, created="2")])
    assert held == {
        **{f"S{i}": ("ns", "a") for i in range(4)},
        "S4": ("ns", "b"),
        "S5": ("ns", "b"),
    }
    # a finishes; c comes: it takes a's cards, b keeps its own.
    held = alloc.sync([pod("a", 4, phase="Succeeded"), pod("b", 2), pod("c", 2, created="3")])
    assert held == {"S0": ("ns", "c"), "S1": ("ns", "c"), "S4": ("ns", "b"), "S5": ("ns", "b")}
    # A new pod with an old name (a new uid) is a new holder.
    held = alloc.sync([pod("b", 2, uid="b2")])
    assert held == {"S0": ("ns", "b"), "S1": ("ns", "b")}


def test_a_pod_without_hpus_holds_no_card() -> None:
    assert Allocator(["S0"]).sync([pod("cpu", 0)]) == {}


@pytest.fixture
def fleet(tmp_path: Path) -> Any:
    pods = [pod("job-worker-0", 2, created="1")]
    f = GaudiExporterFleet(tmp_path, "t", ["n0", "n1"], lambda: pods, min_scrape_interval=0)
    yield f
    f.close()


def series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_the_fleet_registers_one_target_per_node_labelled_as_intels_daemonset(
    fleet: GaudiExporterFleet, tmp_path: Path
) -> None:
    groups = json.loads((tmp_path / "t.json").read_text())
    assert len(groups) == 2
    assert {g["labels"]["namespace"] for g in groups} == {"monitoring"}  # the exporter's own
    fleet.close()
    assert not (tmp_path / "t.json").exists()


def test_injected_faults_show_on_the_card_and_its_holder(fleet: GaudiExporterFleet) -> None:
    [(node, card), _] = fleet.held_by("ns", "job-worker-0")
    assert node == "n0" and card.index == 0
    fleet.ecc("n0", 0, rows=3)
    fleet.overheat("n0", 1)
    fleet.link_down("n0", 1)
    text = fleet.scrape("n0")
    [ecc] = [
        s
        for s in series(text, "habanalabs_pending_rows_with_double_bit_ecc_errors")
        if 'id="0"' in s
    ]
    assert 'pod_name="job-worker-0"' in ecc and 'pod_namespace="ns"' in ecc and ecc.endswith(" 3")
    [hot] = [s for s in series(text, "habanalabs_temperature_onchip") if 'id="1"' in s]
    assert hot.endswith(" 125")
    down = [s for s in series(text, PORT_FAMILY) if s.endswith(" 0")]
    assert (
        len(down) == 1
        and f'port="{min(EXTERNAL_PORTS)}"' in down[0]
        and 'port_type="external"' in down[0]
    )
    fleet.heal()
    assert not [s for s in series(fleet.scrape("n0"), PORT_FAMILY) if s.endswith(" 0")]


def test_zeros_read_as_intels_zero_fill(fleet: GaudiExporterFleet) -> None:
    fleet.zeros("n0", 0)
    text = fleet.scrape("n0")
    for name in ("habanalabs_temperature_onchip", "habanalabs_temperature_threshold_shutdown"):
        [s] = [s for s in series(text, name) if 'id="0"' in s]
        assert s.endswith(" 0") and 'pod_name="job-worker-0"' in s  # still mapped by serial
    assert all(s.endswith(" 0") for s in series(text, PORT_FAMILY) if 'id="0"' in s)
    fleet.zeros("n0", 1, ["temperature_threshold_shutdown"])
    [s] = [s for s in series(fleet.scrape("n0"), "habanalabs_temperature_onchip") if 'id="1"' in s]
    assert not s.endswith(" 0")  # only the named field


def test_a_failing_rhlml_serves_nothing_and_lost_pod_resources_only_kube_info(
    fleet: GaudiExporterFleet,
) -> None:
    fleet.exporters["n0"].rhlml_fails = True
    assert fleet.scrape("n0") == ""
    fleet.exporters["n0"].rhlml_fails = False
    fleet.exporters["n0"].pod_resources_down = True
    assert set(families(fleet.scrape("n0"))) == {"habanalabs_kube_info"}


def test_scrapes_closer_than_five_seconds_get_429_as_upstream(tmp_path: Path) -> None:
    f = GaudiExporterFleet(tmp_path, "r", ["n0"], list)  # the upstream limit by default
    try:
        port = json.loads((tmp_path / "r.json").read_text())[0]["targets"][0].split(":")[1]
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith(
                "text/plain; version=0.0.4"
            )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=5)
        assert err.value.code == 429
    finally:
        f.close()
