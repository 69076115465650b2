"""The operator's default HPU health query, evaluated by promtool over series in Intel's
exporter schema (rendered by the fixture exporter): each fault is found on the card and
the pod holding it, and zero-filled readings never are."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml

from gaudi_devtools.gaudi_exporter import EXTERNAL_PORTS, Card, healthy_card, render
from gaudi_operator.failover.signals import DEFAULT_HPU_HEALTH_QUERY
from monitoring import tool

STEP, PER_PHASE = 15, 20  # a sample every 15 s; 5 minutes healthy, then 5 minutes changed
EVAL = f"{(2 * PER_PHASE - 2) * STEP}s"
POD = {"pod_namespace": "team-a", "pod_name": "llama-worker-1"}
LINK_PORT = min(EXTERNAL_PORTS)


def samples(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = value
    return out


def series_over(before: str, after: str) -> list[dict[str, str]]:
    """promtool input series: the exporter's answer `before` for 5 minutes, then `after`
    (a series missing from one of them is absent then)."""
    a, b = samples(before), samples(after)
    out = []
    for s in sorted(a.keys() | b.keys()):
        values = [a.get(s, "_")] * PER_PHASE + [b.get(s, "_")] * PER_PHASE
        out.append({"series": s, "values": " ".join(values)})
    return out


def nothing(cards: list[Card]) -> None:
    pass


def check(
    tmp_path: Path,
    change: Callable[[list[Card]], None],
    expected: list[tuple[str, float]],
    start: Callable[[list[Card]], None] = nothing,
) -> None:
    """The query returns `expected` (labels, value) 5 minutes after `change` happened to
    three cards of a node, the first two held by a pod (`start`: how they were before)."""
    cards = [healthy_card(0, 0), healthy_card(0, 1), healthy_card(0, 2)]
    holders = {c.serial: (POD["pod_namespace"], POD["pod_name"]) for c in cards[:2]}
    start(cards)
    before = render(cards, holders, "n0")
    change(cards)
    after = render(cards, holders, "n0")
    test = {
        "expr": DEFAULT_HPU_HEALTH_QUERY,
        "eval_time": EVAL,
        "exp_samples": [{"labels": ls, "value": v} for ls, v in expected],
    }
    case = {
        "rule_files": [],
        "evaluation_interval": f"{STEP}s",
        "tests": [
            {
                "interval": f"{STEP}s",
                "input_series": series_over(before, after),
                "promql_expr_test": [test],
            }
        ],
    }
    path = tmp_path / "case.yaml"
    path.write_text(yaml.safe_dump(case, sort_keys=False))
    out = subprocess.run(
        [tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def labels(fault: str, card: int) -> str:
    ls = {**POD, "Serial": f"AN0000{card:02d}", "fault": fault, "id": str(card)}
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(ls.items())) + "}"


def test_healthy_cards_have_no_fault(tmp_path: Path) -> None:
    check(tmp_path, nothing, [])


def test_double_bit_ecc_rows_are_a_fault_of_the_card_and_its_pod(tmp_path: Path) -> None:
    def ecc(cards: list[Card]) -> None:
        cards[1].values["pending_rows_double_bit_ecc_errors"] = 2
        cards[2].values["pending_rows_double_bit_ecc_errors"] = 2  # a free card: no pod

    # The free card's fault names no pod: it concerns no job.
    free = '{Serial="AN000002", fault="ecc", id="2"}'
    check(tmp_path, ecc, [(labels("ecc", 1), 2), (free, 2)])


def test_the_shutdown_temperature_is_a_fault(tmp_path: Path) -> None:
    def hot(cards: list[Card]) -> None:
        cards[0].values["temperature_on_chip"] = cards[0].values["temperature_threshold_shutdown"]

    check(tmp_path, hot, [(labels("temperature", 0), 125)])


def test_a_scale_out_port_that_goes_down_is_a_link_fault(tmp_path: Path) -> None:
    def down(cards: list[Card]) -> None:
        next(p for p in cards[1].ports if p.port == LINK_PORT).status = 0

    check(tmp_path, down, [(labels("link", 1), 1)])


def test_a_scale_up_port_going_down_is_not_a_scale_out_fault(tmp_path: Path) -> None:
    def internal(cards: list[Card]) -> None:
        cards[1].ports[0].status = 0

    assert healthy_card(0, 0).ports[0].port_type == "internal"
    check(tmp_path, internal, [])


def test_a_card_that_reads_all_zeros_has_no_fault(tmp_path: Path) -> None:
    # rhlml could read nothing: every number 0 and every link "down" (zero-fill), on a card
    # whose ports were up. Not a link fault, not a temperature fault.
    def unreadable(cards: list[Card]) -> None:
        for name in cards[0].values:
            cards[0].values[name] = 0
        for p in cards[0].ports:
            p.status = 0

    check(tmp_path, unreadable, [])


def test_an_unread_shutdown_threshold_is_no_threshold(tmp_path: Path) -> None:
    # `onchip >= threshold` with threshold 0 would be true for every card.
    def unread(cards: list[Card]) -> None:
        cards[0].values["temperature_threshold_shutdown"] = 0
        cards[1].values["temperature_threshold_shutdown"] = 0

    check(tmp_path, unread, [])


def test_a_port_that_never_read_up_is_not_a_link_fault(tmp_path: Path) -> None:
    # A port reading 0 all along: never cabled, or its state never readable.
    def never(cards: list[Card]) -> None:
        next(p for p in cards[1].ports if p.port == LINK_PORT).status = 0

    check(tmp_path, nothing, [], start=never)
