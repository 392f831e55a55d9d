"""The live state's reading of meter values into what the optimizer counts."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from nowblock.seam import BlockSnapshot, violation_a
from nowblock.ocpp.meter import parse_meter_values
from nowblock.ocpp.state import LiveState
from nowblock.testing import make_test_site

T0 = datetime(2026, 3, 2, 17, 0, tzinfo=timezone.utc)


def _state_with_one_car():
    state = LiveState(make_test_site(1, grid_a=20.0))
    state.on_connect("CP1", "1.6")
    state.on_start("CP1", 1, 7, start=T0, meter_start_wh=0.0)
    return state


def _reading(*phase_values):
    sv = [{"value": str(a), "measurand": "Current.Import", "unit": "A", **({"phase": p} if p else {})}
          for p, a in phase_values]
    return parse_meter_values([{"timestamp": "2026-03-02T17:01:00Z", "sampled_value": sv}])[0]


def test_an_aggregate_current_reading_does_not_make_a_three_phase_car_single_phase():
    state = _state_with_one_car()
    # Many 1.6 chargers report one Current.Import without a phase: it says nothing about L2, L3.
    state.on_meter("CP1", 1, 7, _reading((None, 16.0)), T0)
    cars = state.snapshot(T0)
    snap = BlockSnapshot(pd.Timestamp(T0), state.site, pd.Timedelta("1min"), cars,
                         pd.Series([0.0], index=pd.DatetimeIndex([pd.Timestamp(T0)])))
    assert snap.cars["phases"].iloc[0] == 3
    # 16 A on a 20 A grid with no other load is safe only if the car is counted on every phase.
    g = snap.incidence()
    assert (g[:3, 0] == 1.0).all()
    assert violation_a(snap, np.array([20.0])) == pytest.approx(0.0)


@pytest.mark.parametrize("currents,phases", [((16.0, 0.0, 0.0), 1), ((16.0, 15.5, 16.2), 3), ((0.2, 0.0, 0.0), 3)])
def test_a_full_three_phase_reading_tells_the_phases(currents, phases):
    state = _state_with_one_car()
    state.on_meter("CP1", 1, 7, _reading(*zip(("L1", "L2", "L3"), currents)), T0)
    assert state.snapshot(T0)["phases"].iloc[0] == phases
