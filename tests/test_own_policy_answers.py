"""A policy of one's own that slips cannot overload a fuse, and every answer that is no setpoints
for the cars is a failed step the fallback answers, with its reason kept (found by an outside
researcher's tests)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from nowblock.block.scenario import Scenario
from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.sim.simulator import simulate

T0 = pd.Timestamp("2026-03-02 17:00", tz="UTC")


def _scenario() -> Scenario:
    """Three cars on a 20 A grid connection (a 16 A maximum each): congested, with a base load."""
    site = Site("own", (Fuse("grid", (20.0,) * 3),),
                tuple(ChargePoint(f"CP{i}", "grid", 16.0, 6.0, 3, "L1L2L3") for i in range(3)))
    sessions = pd.DataFrame({"session_id": [f"s{i}" for i in range(3)], "charge_point_id": [f"CP{i}" for i in range(3)],
                             "arrival": [T0] * 3, "departure": [T0 + pd.Timedelta(hours=4)] * 3,
                             "energy_kwh": [20.0] * 3})
    times = pd.date_range(T0, periods=20, freq="15min")
    return Scenario(site, sessions, base_load=pd.Series(2.0, index=times))


class Own:
    """Asks 500 A for every car, after ``slip(snapshot)``; ``answer(snapshot)`` replaces the answer."""

    name = "own"

    def __init__(self, slip=None, answer=None, **attrs):
        self.slip, self.answer = slip, answer
        self.__dict__.update(attrs)

    def schedule(self, snapshot):
        if self.slip is not None:
            self.slip(snapshot)
        if self.answer is not None:
            return self.answer(snapshot)
        return pd.Series(500.0, index=snapshot.cars.index)


def _limits_slip(snapshot):
    room = snapshot.site.limits_a
    room += 5.0  # meant on a copy


def _base_slip(snapshot):
    base = snapshot.base_load_kw
    base -= 1000.0  # meant on a copy: the same Series object


def _cars_slip(snapshot):
    snapshot.cars["max_current_a"] = 1000.0


@pytest.mark.parametrize("slip", [_limits_slip, _base_slip, _cars_slip], ids=["limits", "base_load", "cars"])
def test_a_policy_editing_its_snapshot_cannot_overload_a_fuse(slip):
    scn = _scenario()
    res = simulate(scn, Own(slip=slip), step="15min")
    assert res.metrics["max_overload_a"] == 0.0
    assert (scn.site.limits_a == 20.0).all()  # the site is unchanged for the next run
    assert simulate(scn, "edf", step="15min").metrics["max_overload_a"] == 0.0
    assert res.timeseries.filter(like="_limit_a").max().max() <= 20.0 + 1e-9


def test_a_policy_of_ones_own_with_safe_false_is_still_made_safe(caplog):
    with caplog.at_level(logging.WARNING, logger="nowblock.loop.step"):
        res = simulate(_scenario(), Own(safe=False), step="15min")
    assert res.metrics["max_overload_a"] == 0.0
    assert any("safe=False" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("answer, why", [
    (lambda s: [16.0] * (len(s.cars) + 1), "setpoints for"),
    (lambda s: pd.Series(16.0, index=list(s.cars.index) + [s.cars.index[0]]), "more than once"),
    (lambda s: pd.Series(16.0, index=s.cars["charge_point_id"].to_numpy()), "none of the"),
    (lambda s: None, "None"),
], ids=["too_long", "repeated_id", "by_charge_point", "none"])
def test_an_answer_that_is_no_setpoints_for_the_cars_is_a_failed_step(answer, why):
    res = simulate(_scenario(), Own(answer=answer), step="15min")
    n = res.metrics["fallback_steps"]
    assert n > 0 and len(res.fallbacks) == n and res.metrics["fallback_policy"] == "edf"
    assert res.fallbacks["reason"].str.contains(why).all() and (res.fallbacks["policy"] == "edf").all()
    assert res.metrics["demand_met"] > 0.5  # the fallback charged them
    assert res.metrics["max_overload_a"] == 0.0


def test_an_infinite_setpoint_is_read_as_the_cars_maximum():
    res = simulate(_scenario(), Own(answer=lambda s: pd.Series(np.inf, index=s.cars.index)), step="15min")
    assert res.metrics["fallback_steps"] == 0 and res.fallbacks.empty
    assert res.metrics["demand_met"] > 0.5 and res.metrics["max_overload_a"] == 0.0
