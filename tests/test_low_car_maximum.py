"""A car whose own maximum is below its charging point's minimum current (say 5 A at a 6 A point).

A pilot signal cannot offer less than 6 A (IEC 61851), but it can offer 6 A to a car that draws
5 A. Such a car used to be offered nothing by every controlled policy and by ``nb.optimize``
(0 or at least the minimum, with a maximum below the minimum, leaves 0), live and simulated:
it must be offered the minimum and counted at what it draws.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

import nowblock as nb
from nowblock.ocpp.state import LiveState

T0 = pd.Timestamp("2026-03-02T17:00:00Z")


def _scenario(car_max_a: float = 5.0) -> nb.Scenario:
    site = nb.Site.from_dict({"name": "low", "fuses": [{"id": "grid", "max_current_a": 40}],
                              "charge_points": [{"id": "CP01", "fuse": "grid", "max_current_a": 16},
                                                {"id": "CP02", "fuse": "grid", "max_current_a": 16}]})
    sessions = pd.DataFrame({
        "session_id": ["low", "normal"], "charge_point_id": ["CP01", "CP02"],
        "arrival": [T0, T0], "departure": [T0 + pd.Timedelta("4h")] * 2,
        "energy_kwh": [8.0, 8.0], "max_current_a": [car_max_a, 16.0], "phases": [3, 3]})
    return nb.Scenario(site=site, sessions=sessions)


@pytest.mark.parametrize("policy", ["edf", "llf", "equal", "round_robin", "milp"])
def test_every_policy_charges_a_car_whose_maximum_is_below_the_minimum(policy):
    # 5 A on three phases is 3.45 kW: 8 kWh takes 2.3 h of the 4 h stay; the fuse never binds.
    res = nb.simulate(_scenario(), policy, step="5min")
    got = res.sessions.set_index("session_id")["energy_delivered_kwh"]
    assert got["low"] == pytest.approx(8.0, abs=0.01)
    assert got["normal"] == pytest.approx(8.0, abs=0.01)
    assert res.metrics["max_overload_a"] == 0.0


class _Recorder:
    """EDF, keeping what each step offered the low car."""

    name = "recorder"

    def __init__(self):
        self.edf = nb.get_policy("edf")
        self.offers: list[float] = []

    def schedule(self, snapshot):
        out = self.edf.schedule(snapshot)
        if "low" in out.index:
            self.offers.append(float(out["low"]))
        return out


def test_the_offer_is_the_minimum_and_the_draw_the_cars_own_maximum():
    rec = _Recorder()
    res = nb.simulate(_scenario(), rec, step="5min")
    offers = np.array(rec.offers)
    assert (offers > 0).any() and ((offers == 0) | (offers >= 6.0)).all()
    drawn = res.draws.loc[res.draws["session_id"] == "low", "current_a"]
    assert drawn.max() == pytest.approx(5.0)


def test_optimize_plans_the_minimum_and_counts_the_cars_draw():
    scn = _scenario()
    plan = nb.optimize(scn.site, scn.sessions, start=T0, horizon="6h", step="15min")
    low = plan.current_a["low"].to_numpy(float)
    assert ((low == 0) | (low >= 6.0 - 1e-9)).all()
    assert low.max() > 0
    assert plan.shortfall_kwh["low"] == pytest.approx(0.0, abs=1e-6)
    # The plan's energy is counted at the 5 A the car draws, not at the 6 A offered.
    energy = dict(zip(plan.current_a.columns, plan.energy_per_car_kwh))
    assert energy["low"] == pytest.approx(float(low.sum()) * 5 / 6 * 3 * 0.23 * 0.25)
    assert energy["low"] >= 8.0 - 1e-6


def test_live_snapshot_offers_the_minimum_to_a_car_reporting_a_lower_maximum():
    site = nb.Site.from_dict({"name": "live", "fuses": [{"id": "grid", "max_current_a": 40}],
                              "charge_points": [{"id": "CP01", "fuse": "grid", "max_current_a": 16}]})
    state = LiveState(site)
    now = datetime.now(timezone.utc)
    state.on_connect("CP01", "2.0.1")
    state.on_start("CP01", 1, "tx1", start=now - timedelta(minutes=5))
    state.on_needs("CP01", 1, departure=now + timedelta(hours=4), energy_kwh=8.0, ev_max_current_a=5.0)
    row = state.snapshot(now).iloc[0]
    assert row["min_current_a"] == 6.0
    assert row["max_current_a"] == 6.0
    # A car reporting a higher minimum than the point's is offered at least that.
    state.on_needs("CP01", 1, departure=None, energy_kwh=None, ev_max_current_a=5.0, ev_min_current_a=8.0)
    row = state.snapshot(now).iloc[0]
    assert row["min_current_a"] == 8.0 and row["max_current_a"] == 8.0
