"""The live state's reading of meter values into what the optimizer counts."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from nowblock.seam import BlockSnapshot, violation_a
from nowblock.ocpp import profiles as pr
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


def _with_failsafe(version: str) -> LiveState:
    # The station holds a 16 A TxDefaultProfile on connector 0 (the fail-safe), nothing else.
    state = LiveState(make_test_site(1, grid_a=40.0), clock=lambda: T0)
    state.on_connect("CP1", version)
    state.on_profile_accepted("CP1", 0, pr.build_profile(version, pr.TX_DEFAULT, 16.0, connector_id=0, now=T0,
                                                         profile_id=pr.TX_DEFAULT_ID_BASE))
    return state


def test_a_cleared_profile_whose_answer_never_came_no_longer_counts():
    # Found by review: an unanswered profile counted as possibly in force after a ClearChargingProfile
    # that removed it (had the station taken it) was accepted: room reserved for nothing.
    state = _with_failsafe("1.6")
    state.on_profile_unanswered("CP1", 1, pr.build_profile("1.6", pr.TX_DEFAULT, 32.0, connector_id=1, now=T0))
    assert state.applied_limit_a("CP1", 1, T0) == 32.0
    state.on_profiles_cleared("CP1", profile_id=pr.TX_DEFAULT_ID_BASE + 1)
    assert state.applied_limit_a("CP1", 1, T0) == 16.0

    state = _with_failsafe("1.6")
    state.on_start("CP1", 1, 7, start=T0)
    state.on_profile_accepted("CP1", 1, pr.build_profile("1.6", pr.TX, 10.0, connector_id=1, transaction_id=7, now=T0))
    state.on_profile_unanswered("CP1", 1, pr.build_profile("1.6", pr.TX, 32.0, connector_id=1, transaction_id=7,
                                                           now=T0))
    state.on_profile_unanswered("CP1", 2, pr.build_profile("1.6", pr.TX_DEFAULT, 24.0, connector_id=2, now=T0))
    assert state.applied_limit_a("CP1", 1, T0) == 32.0
    state.on_profiles_cleared("CP1", connector_id=1, purpose=pr.TX)
    assert state.applied_limit_a("CP1", 1, T0) == 16.0  # the default is all it holds now
    # One the clear did not match still counts.
    assert state.applied_limit_a("CP1", 2, T0) == 24.0


@pytest.mark.parametrize("version,tx", [("1.6", 7), ("2.0.1", "A")])
def test_an_unanswered_txprofile_ends_with_its_transaction_and_a_default_does_not(version, tx):
    # Found by review: a stop left its TxProfiles whose answer never came among those possibly in
    # force; a 1.6 one without a transaction id was counted on the next car of the connector.
    state = _with_failsafe(version)
    state.on_start("CP1", 1, tx, start=T0)
    anyone = pr.build_profile(version, pr.TX, 32.0, connector_id=1, transaction_id=tx, now=T0)
    if version == "1.6":
        anyone.pop("transaction_id")  # 1.6: for whichever transaction runs on the connector
    state.on_profile_unanswered("CP1", 1, anyone)
    state.on_profile_unanswered("CP1", 2, pr.build_profile(version, pr.TX_DEFAULT, 24.0, connector_id=2, now=T0))
    state.on_stop("CP1", tx, stop=T0)
    # A time-out coming in after the stop is not counted either.
    state.on_profile_unanswered("CP1", 1, pr.build_profile(version, pr.TX, 30.0, connector_id=1, transaction_id=tx,
                                                           now=T0))
    state.on_start("CP1", 1, 8 if version == "1.6" else "B", start=T0)
    assert state.applied_limit_a("CP1", 1, T0) == 16.0
    assert [p.purpose for p in state.station("CP1").unanswered] == [pr.TX_DEFAULT]
    # The default on connector 2 outlives the transaction: still possibly in force.
    assert state.applied_limit_a("CP1", 2, T0) == 24.0


def _needs201(state: LiveState, cp_id: str, mode: str, evse_id: int = 1) -> str:
    # The 2.0.1 handler itself (it reads self.id and self.state only), as a station's message reaches it.
    from nowblock.ocpp.v201 import ChargePoint201

    conn = object.__new__(ChargePoint201)
    conn.id, conn.state = cp_id, state
    return ChargePoint201.on_notify_ev_charging_needs(conn, {
        "requested_energy_transfer": mode, "departure_time": "2026-03-02T20:00:00Z",
        "ac_charging_parameters": {"energy_amount": 20000, "ev_min_current": 6, "ev_max_current": 32,
                                   "ev_max_voltage": 230}}, evse_id).status


def _state201(n: int = 1) -> LiveState:
    state = LiveState(make_test_site(n, grid_a=32.0), clock=lambda: T0)
    for i in range(1, n + 1):
        state.on_connect(f"CP{i}", "2.0.1")
        state.on_start(f"CP{i}", 1, f"T{i}", start=T0, meter_start_wh=0.0)
    return state


@pytest.mark.parametrize("mode,phases", [("AC_single_phase", 1), ("AC_two_phase", 2), ("AC_three_phase", 3),
                                         ("DC", 3)])
def test_the_phases_a_car_declares_are_planned_until_the_meter_shows_otherwise(mode, phases):
    # Found by an outside test: AC_single_phase was ignored, the car planned on three phases, and
    # 1-phase cars on different grid phases were served one at a time.
    state = _state201()
    # The station's meter reads every phase (nothing drawn yet: no phase count from it).
    state.on_meter("CP1", 1, "T1", _reading(("L1", 0.0), ("L2", 0.0), ("L3", 0.0)), T0)
    assert _needs201(state, "CP1", mode) == "Accepted"
    assert state.snapshot(T0)["phases"].iloc[0] == phases
    events = []
    state.add_listener(events.append)
    # The meter shows the car on three phases: planned on three, and the meter event says so (it
    # wakes a step at once) whenever fewer were planned.
    state.on_meter("CP1", 1, "T1", _reading(("L1", 16.0), ("L2", 16.0), ("L3", 16.0)), T0)
    assert state.snapshot(T0)["phases"].iloc[0] == 3
    assert bool(events[-1].data.get("phases_up")) == (phases < 3)


@pytest.mark.parametrize("reading", [None, {"current_l1_a": 16.0}, {"power_w": 11040.0}])
def test_a_declared_phase_count_is_not_planned_where_the_meter_could_not_show_it_wrong(reading):
    # Found by a review: a car declaring AC_single_phase but drawing on three, at a station whose
    # meter reads one aggregate current (or power only, or nothing yet), was planned on one phase
    # for as long as it charged: 1-phase cars on the other grid phases took their full share
    # beside it, 48 A on 32 A phases.
    state = _state201()
    if reading is not None:
        state.on_meter("CP1", 1, "T1", reading, T0)
    _needs201(state, "CP1", "AC_single_phase")
    assert state.snapshot(T0)["phases"].iloc[0] == 3


def test_a_declaration_never_lowers_what_the_meter_showed_and_a_raise_plans_every_phase():
    state = _state201()
    state.on_meter("CP1", 1, "T1", _reading(("L1", 16.0), ("L2", 16.0), ("L3", 16.0)), T0)
    _needs201(state, "CP1", "AC_single_phase")
    assert state.snapshot(T0)["phases"].iloc[0] == 3  # the meter must show one phase itself
    state.on_meter("CP1", 1, "T1", _reading(("L1", 16.0), ("L2", 0.0), ("L3", 0.0)), T0)
    assert state.snapshot(T0)["phases"].iloc[0] == 1
    # Declared on more phases than it was seen on: it may switch before its next meter value.
    _needs201(state, "CP1", "AC_two_phase")
    assert state.snapshot(T0)["phases"].iloc[0] == 3


def test_a_car_declared_single_phase_whose_power_shows_three_is_planned_on_three():
    # A meter reading one current only (an aggregate, or the live phase) cannot show the phases;
    # the total power can: 11 kW at 16 A is three phases, whatever the car declared.
    state = _state201()
    state.on_meter("CP1", 1, "T1", _reading(("L1", 0.0), ("L2", 0.0), ("L3", 0.0)), T0)  # a phased meter
    _needs201(state, "CP1", "AC_single_phase")
    events = []
    state.add_listener(events.append)
    state.on_meter("CP1", 1, "T1", {"current_l1_a": 16.0, "power_w": 3680.0}, T0)
    assert state.snapshot(T0)["phases"].iloc[0] == 1 and not events[-1].data.get("phases_up")
    state.on_meter("CP1", 1, "T1", {"current_l1_a": 16.0, "power_w": 11040.0}, T0)
    assert state.snapshot(T0)["phases"].iloc[0] == 3 and events[-1].data.get("phases_up")


def test_an_older_meter_value_never_undoes_a_newer_one():
    """Found by an outside test: meter values out of order overwrote newer ones: a late, older
    message set a car's current back from 14 A to 0 A and its energy from 6.0 to 4.0 kWh, and
    within one message the last entry won whatever its time."""
    from datetime import timedelta

    state = _state201()
    state.on_meter("CP1", 1, "T1", {"current_l1_a": 14.0, "current_l2_a": 14.0, "current_l3_a": 14.0,
                                    "energy_wh": 6000.0}, T0 + timedelta(seconds=60))
    assert state.on_meter("CP1", 1, "T1", {"current_l1_a": 0.0, "current_l2_a": 0.0, "current_l3_a": 0.0,
                                           "energy_wh": 4000.0}, T0 + timedelta(seconds=30)) is None
    t = state.transaction("CP1", "T1")
    assert t.current_a == (14.0, 14.0, 14.0) and t.energy_register_wh == 6000.0
    # One message, the newer entry first: the newer value still wins.
    def entry(sec, amps):
        return {"timestamp": (T0 + timedelta(seconds=sec)).isoformat(),
                "sampled_value": [{"measurand": "Current.Import", "phase": p, "value": amps} for p in ("L1", "L2", "L3")]}
    reading, latest = parse_meter_values([entry(120, 14.0), entry(90, 0.0)])
    assert reading["current_l1_a"] == 14.0 and latest == T0 + timedelta(seconds=120)
