"""Simulation throughput in simulated car-hours per second (pytest-benchmark).

Run on purpose (not part of the default ``pytest``)::

    python -m pytest benchmarks/bench_simulate.py -p no:cacheprovider --benchmark-columns=mean,min,max,rounds

Two blocks, each with the ``equal`` policy against ``uncontrolled`` (no policy work, no safety
net: the simulator's own cost) as the baseline in the same run:

* the default NOW-Block (``Scenario.default()``: 24 charging points, one week), 5-minute steps;
* a scaled block (``generate_block(n_charge_points=200, days=30)``), 5-minute steps.

``extra_info`` carries the car-hours simulated (plugged-in session hours) and car-hours per
second of wall time; docs/bench_simulate.md records the numbers.
"""

from __future__ import annotations

import pytest

from nowblock.block.scenario import Scenario
from nowblock.sim.simulator import simulate
from nowblock.block.scenario import generate_block


@pytest.fixture(scope="module")
def default_block():
    return Scenario.default()


@pytest.fixture(scope="module")
def scaled_block():
    return generate_block(n_charge_points=200, days=30)


def _run(benchmark, scenario, policy, rounds):
    res = benchmark.pedantic(simulate, args=(scenario, policy), kwargs={"step": "5min"},
                             rounds=rounds, iterations=1, warmup_rounds=0)
    car_h = res.metrics["car_hours"]
    mean_s = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        car_hours=round(car_h, 1),
        car_hours_per_s=round(car_h / mean_s, 1),
        steps=res.metrics["n_steps"],
        steps_per_s=round(res.metrics["n_steps"] / mean_s, 1),
        sessions=res.metrics["n_sessions"],
        solve_seconds_median=res.metrics["solve_seconds_median"],
        max_overload_a=round(res.metrics["max_overload_a"], 3),
    )
    return res


@pytest.mark.benchmark(group="default block (24 CP, 7 days, 5 min)")
@pytest.mark.parametrize("policy", ["uncontrolled", "equal"])
def test_default_block(benchmark, default_block, policy):
    res = _run(benchmark, default_block, policy, rounds=3)
    if policy != "uncontrolled":
        assert res.metrics["max_overload_a"] == 0.0


@pytest.mark.benchmark(group="scaled block (200 CP, 30 days, 5 min)")
@pytest.mark.parametrize("policy", ["uncontrolled", "equal"])
def test_scaled_block(benchmark, scaled_block, policy):
    res = _run(benchmark, scaled_block, policy, rounds=1)
    if policy != "uncontrolled":
        assert res.metrics["max_overload_a"] == 0.0
