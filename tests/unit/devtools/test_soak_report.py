"""The soak benchmark's arithmetic and parsing: the slope, the scrape, the seeded rounds."""

from __future__ import annotations

import random

import pytest

from gaudi_devtools.benchmarks.soak import Scrape, plan_round, slope_per_1000

METRICS = """\
# HELP gaudi_operator_cache_entries x
# TYPE gaudi_operator_cache_entries gauge
gaudi_operator_cache_entries{cache="job_phases"} 0.0
gaudi_operator_cache_entries{cache="disruptions"} 2.0
gaudi_operator_cache_entries{cache="nodes"} 32.0
# HELP gaudi_operator_job_phase x
# TYPE gaudi_operator_job_phase gauge
gaudi_operator_job_phase{gtj="a",gtj_namespace="ns",phase="Running"} 1.0
# HELP gaudi_operator_autoscale_desired_replicas x
# TYPE gaudi_operator_autoscale_desired_replicas gauge
gaudi_operator_autoscale_desired_replicas{job="b",namespace="ns"} 2.0
"""


def test_the_slope_is_mib_per_thousand_cycles() -> None:
    assert slope_per_1000([(0, 100.0), (500, 101.0), (1000, 102.0)]) == pytest.approx(2.0)
    assert slope_per_1000([(0, 100.0), (1000, 100.0)]) == 0.0


def test_a_scrape_counts_per_job_entries_and_series_but_not_nodes() -> None:
    s = Scrape.parse(METRICS)
    assert s.per_job() == {"job_phases": 0, "disruptions": 2}
    assert s.caches["nodes"] == 32
    assert s.job_series == 2  # job a's phase and job b's desired replicas
    assert not s.empty()


def test_a_round_has_the_asked_shares_in_a_seeded_order() -> None:
    kinds = plan_round(random.Random(1), 100, 0.3, 0.2)
    assert (kinds.count("autoscaled"), kinds.count("failing"), kinds.count("plain")) == (30, 20, 50)
    assert kinds == plan_round(random.Random(1), 100, 0.3, 0.2)
