"""Stations that take watts only: the phases a car is planned on, the power it draws on, and the limit
sent again when its phases change.

Stations that take watts only: numberPhases is what the car is planned on, the power what it
is known to draw on (the ``ocpp`` library's simulated chargers over 127.0.0.1).

Stations taking watts: the limit re-sent when a car's phase count changes is the latest one,
sent in turn with the steps' (the ``ocpp`` library's simulated chargers over 127.0.0.1).

The limit sent again to a car at a watts-only station when its phases change, against the
project's RawStation (raw OCPP 1.6J frames checked against the official schemas both ways).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from interop.station import Late, RawStation, limit_of, meter_16, meter_201, now_iso

from nowblock.ocpp import profiles as pr
from nowblock.sim.chargers import Car, Quirks
from nowblock.testing import central_system, chargers, eventually, make_test_site


FAST = dict(backoff_s=0.01, response_timeout_s=2.0)


def _tx_period(sim) -> pr.Period:
    (p,) = [p for p in sim.profiles if p.purpose == pr.TX]
    assert p.unit == "W"
    return p.periods[0]


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_three_phase_car_is_not_told_to_charge_on_one_phase(version):
    # H5 s10: a W-only station got numberPhases 1 for every car: its 3-phase car drew 32 A on
    # L1 alone and was planned on one phase from then on.
    async with central_system(make_test_site(1), **FAST) as cs:
        spec = dict(cp_id="CP1", version=version, meter_interval_s=0.1, quirks=Quirks(rate_unit="W"))
        async with chargers(cs, spec) as (sim,):
            await eventually(lambda: cs.state.station("CP1").rate_unit == "W")
            await sim.plug_in(Car(phases=3))
            t = await eventually(lambda: (cs.state.running("CP1") or [None])[0])
            rec = await cs.set_limit("CP1", 1, 24.0)
            # planned on its three phases; the power of one until its meter shows three (a 1-phase
            # car then cannot draw more than 24 A on its phase)
            q = _tx_period(sim)
            assert q.number_phases == 3 and q.limit in (24.0 * 230.0, 3 * 24.0 * 230.0)
            assert rec.accepted_a == 24.0
            await eventually(lambda: t.phases_used == 3)
            # once its meter shows them, the same limit goes out again on all three, unasked
            await eventually(lambda: _tx_period(sim).limit == 3 * 24.0 * 230.0)
            assert _tx_period(sim).number_phases == 3 and sim.applied_limit_a() == 24.0
            rec = await cs.set_limit("CP1", 1, 10.0)
            q = _tx_period(sim)
            assert q.number_phases == 3 and q.limit == 3 * 10.0 * 230.0
            assert rec.accepted_a == cs.state.applied_limit_a("CP1", 1) == 10.0 and sim.applied_limit_a() == 10.0


async def test_watts_for_a_car_of_unknown_phases_are_counted_on_one_phase():
    # numberPhases 3 with the power of one phase: a 1-phase car draws all of it on its phase,
    # and that is what is counted (not a third of it).
    now = pr.utcnow()
    held = [pr.Profile.from_payload(1, pr.build_profile("1.6", pr.TX, 10.0, connector_id=1, now=now, unit="W",
                                                        phases=1, number_phases=3, transaction_id=7))]
    assert held[0].periods[0].number_phases == 3 and held[0].periods[0].limit == 2300.0
    assert pr.active_limit_a(held, 1, now, transaction_id=7, phases=1) == 10.0
    assert pr.active_limit_a(held, 1, now, transaction_id=7, phases=3) == pytest.approx(10.0 / 3)


FAST = dict(backoff_s=0.01, response_timeout_s=2.0)


def _resends(cs) -> list[asyncio.Task]:
    return [t for t in cs._tasks if t.get_name().startswith("phases-known")]


async def test_the_phases_known_resend_never_overwrites_a_lower_limit_in_flight():
    # Review of 8f19584: the re-send took the limit booked when the meter value came (24 A);
    # the step's 6 A, then on the wire, went out first and the old 24 A after it: the station
    # applied 24 A per phase where the step had sent 6 A, and nothing corrected it. (1.6: the
    # simulated 2.0.1 station names its phases in its TransactionEvent Started.)
    async with central_system(make_test_site(1), **FAST) as cs:
        spec = dict(cp_id="CP1", version="1.6", meter_interval_s=600, quirks=Quirks(rate_unit="W"))
        async with chargers(cs, spec) as (sim,):
            await eventually(lambda: cs.state.station("CP1").rate_unit == "W")
            await sim.plug_in(Car(phases=3))
            t = await eventually(lambda: (cs.state.running("CP1") or [None])[0])
            await cs.set_limit("CP1", 1, 24.0)
            step = asyncio.create_task(cs.set_limit("CP1", 1, 6.0))
            await eventually(lambda: cs.station_lock("CP1").locked(), every_s=0)
            # its SetChargingProfile is on the wire as the meter shows the car on three phases
            cs.state.on_meter("CP1", 1, t.transaction_id, {"current_l1_a": 8.0, "current_l2_a": 8.0,
                                                          "current_l3_a": 8.0}, cs.state.clock())
            assert t.phases_used == 3
            await step
            await eventually(lambda: not _resends(cs))
            assert sim.applied_limit_a() == pytest.approx(6.0)
            assert cs.state.applied_limit_a("CP1", 1) == pytest.approx(6.0)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_car_falling_to_one_phase_gets_the_power_of_one(version):
    # Review of 8f19584: a car known on 3 phases (6900 W for 10 A) went on on one phase and
    # kept the 3-phase power: the station applied 30 A on its phase, 10 A planned.
    async with central_system(make_test_site(1), **FAST) as cs:
        spec = dict(cp_id="CP1", version=version, meter_interval_s=0.1, quirks=Quirks(rate_unit="W"))
        async with chargers(cs, spec) as (sim,):
            await eventually(lambda: cs.state.station("CP1").rate_unit == "W")
            car = Car(phases=3)
            await sim.plug_in(car)
            t = await eventually(lambda: (cs.state.running("CP1") or [None])[0])
            await cs.set_limit("CP1", 1, 24.0)  # 8 A a phase until its meter shows three (then 24 A)
            await eventually(lambda: t.phases_used == 3)
            await eventually(lambda: not _resends(cs))
            await cs.set_limit("CP1", 1, 10.0)
            assert sim.applied_limit_a() == pytest.approx(10.0)
            (p,) = [p for p in sim.profiles if p.purpose == pr.TX]
            assert p.periods[0].limit == 3 * 10.0 * 230.0
            car.phases = 1
            await eventually(lambda: t.phases_used == 1)
            await eventually(lambda: not _resends(cs))
            sent = len(sim.received)
            await asyncio.sleep(0.3)  # a few more meter values: sent once, not again at each
            assert len(sim.received) == sent
            assert sim.applied_limit_a() == pytest.approx(10.0)
            assert cs.state.applied_limit_a("CP1", 1) == pytest.approx(10.0)
            assert max(t.current_a) <= 10.0 + 1e-6


V = 230.0  # make_test_site's phase-to-neutral voltage [V]


def _watts_station(action, payload, late_s: float = 0.0):
    """A station (1.6 or 2.0.1) that takes limits in watts only and samples currents per phase;
    it answers SetChargingProfile after ``late_s`` [s]."""
    if action == "GetVariables":
        return {"getVariableResult": [
            {"attributeStatus": "Accepted", "component": v["component"], "variable": v["variable"],
             "attributeValue": "W" if v["variable"]["name"] == "RateUnit" else "Current.Import"}
            for v in payload["getVariableData"]]}
    if action == "SetChargingProfile" and late_s:
        return Late(late_s, {"status": "Accepted"})
    if action == "GetConfiguration":
        return {"configurationKey": [
            {"key": "ChargingScheduleAllowedChargingRateUnit", "readonly": True, "value": "Power"},
            {"key": "MeterValuesSampledData", "readonly": False, "value": "Current.Import"}]}
    if action in ("SetChargingProfile", "ClearChargingProfile", "ChangeConfiguration"):
        return {"status": "Accepted"}
    return {"status": "Rejected"}


def _tx_watts(s: RawStation) -> list[float]:
    """[W] The limit of every TxProfile the station received, in order."""
    key = "csChargingProfiles" if s.version == "1.6" else "chargingProfile"
    return [limit_of(p[key]) for a, p in s.received if a == "SetChargingProfile"
            and p[key]["chargingProfilePurpose"] == "TxProfile"]


async def _started(cs, s: RawStation, ahead_s: float = 0.0):
    """Boot the station (its clock ``ahead_s`` [s] ahead of ours) and start a transaction; its id."""
    def stamp():
        return now_iso(datetime.now(timezone.utc) + timedelta(seconds=ahead_s))
    await s.boot()
    await eventually(lambda: cs.state.station("CP1").rate_unit == "W" and cs.state.station("CP1").failsafe)
    await s.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing",
                                      "timestamp": stamp()})
    r = await s.ok("StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": stamp()})
    await eventually(lambda: cs.state.running("CP1"))
    return r["transactionId"], stamp


@pytest.mark.parametrize("ahead_s", [0.0, 120.0])
async def test_phases_known_resend_does_not_depend_on_the_station_clock(ahead_s):
    """Review R3 L1 of session 35 (/tmp/s36/h2/r2_resend_clock.py): the re-send of a car's limit
    as the power of the 3 phases its meter showed was skipped as 'decided for the previous car'
    by comparing its booking (our clock) with StartTransaction's timestamp (the station's): a
    station 120 s ahead kept 3680 W, 5.33 A per phase for a 16 A limit."""
    async with central_system(make_test_site(1), backoff_s=0.01, response_timeout_s=3.0) as cs:
        s = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", answer=_watts_station).connect()
        try:
            tx, stamp = await _started(cs, s, ahead_s)
            await cs.set_limit("CP1", 1, 16.0, transaction_id=tx)
            assert _tx_watts(s) == [pytest.approx(16.0 * V)]  # phases unknown: the power of one
            await s.ok("MeterValues", meter_16(1, tx, amps=[8.0, 8.0, 8.0], energy_wh=100.0, when=stamp()))
            await eventually(lambda: len(_tx_watts(s)) == 2, timeout_s=5)
            assert _tx_watts(s)[-1] / (3 * V) == pytest.approx(16.0)
            await eventually(lambda: cs.state.applied_limit_a("CP1", 1) == pytest.approx(16.0))  # its answer booked
            assert s.schema_errors == []
        finally:
            await s.close()


class _Slow:
    """:func:`_watts_station` answering SetChargingProfile after ``late_s`` [s] (0: at once)."""

    def __init__(self) -> None:
        self.late_s = 0.0

    def __call__(self, action, payload):
        return _watts_station(action, payload, self.late_s)


I3, I1 = [8.0, 8.0, 8.0], [8.0, 0.0, 0.0]


async def _meter_201(s: RawStation, tx: str, seq: int, amps) -> None:
    await s.ok("TransactionEvent", {"eventType": "Updated", "timestamp": now_iso(), "seqNo": seq,
                                    "triggerReason": "MeterValuePeriodic", "transactionInfo": {"transactionId": tx},
                                    "meterValue": meter_201(amps=amps, energy_wh=100.0)})


async def test_a_phase_change_during_a_pending_resend_is_sent_too():
    """Review R3 L2 of session 35 (/tmp/s36/h2/r3_phase_resend.py case A, 2.0.1): a car at 10 A
    known on 3 phases goes on on 1 (its limit goes out again as the power of 1, 2300 W), and while
    that is on the wire declares 3 phases and its meter shows 3: the 'phases known' event was
    dropped as one re-send was pending already, and the station kept 2300 W, 3.33 A per phase."""
    slow = _Slow()
    async with central_system(make_test_site(1), backoff_s=0.01, response_timeout_s=5.0) as cs:
        s = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", "2.0.1", answer=slow).connect()
        try:
            await s.boot()
            await eventually(lambda: cs.state.station("CP1").rate_unit == "W" and cs.state.station("CP1").failsafe)
            await s.ok("TransactionEvent", {"eventType": "Started", "timestamp": now_iso(), "seqNo": 0,
                                            "triggerReason": "CablePluggedIn", "transactionInfo": {"transactionId": "T1"},
                                            "evse": {"id": 1, "connectorId": 1}})
            await _meter_201(s, "T1", 1, I3)
            await cs.set_limit("CP1", 1, 10.0, transaction_id="T1")
            assert _tx_watts(s) == [pytest.approx(10.0 * 3 * V)]
            slow.late_s = 1.0
            await _meter_201(s, "T1", 2, I1)
            await eventually(lambda: len(_tx_watts(s)) == 2, every_s=0.005)  # the power of 1 on the wire
            assert _tx_watts(s)[-1] == pytest.approx(10.0 * V)
            await s.ok("NotifyEVChargingNeeds", {"evseId": 1, "chargingNeeds": {"requestedEnergyTransfer": "AC_three_phase"}})
            await _meter_201(s, "T1", 3, I3)
            await eventually(lambda: len(_tx_watts(s)) == 3, timeout_s=5)
            assert _tx_watts(s)[-1] / (3 * V) == pytest.approx(10.0)
            await eventually(lambda: cs.state.running("CP1")[0].power_phases == 3)
            assert s.schema_errors == []
        finally:
            await s.close()


async def test_a_car_dropping_to_one_phase_while_its_watts_limit_is_on_the_wire_gets_it_again():
    """Found mending the above (/tmp/s36/h2/r3_phase_resend.py case B, 1.6): the 'phases known'
    re-send (6900 W, the power of 3 for 10 A) was on the wire when the car went on on 1 phase; no
    meter value flagged it (the station's accepted power was not known yet), and once accepted the
    car's phase could take all of it, 30 A for 10 A, until its next meter value."""
    slow = _Slow()
    async with central_system(make_test_site(1), backoff_s=0.01, response_timeout_s=5.0) as cs:
        s = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", answer=slow).connect()
        try:
            tx, stamp = await _started(cs, s)
            await cs.set_limit("CP1", 1, 10.0, transaction_id=tx)  # phases unknown: the power of one
            slow.late_s = 1.0
            await s.ok("MeterValues", meter_16(1, tx, amps=I3, energy_wh=100.0))
            await eventually(lambda: len(_tx_watts(s)) == 2, every_s=0.005)  # the power of 3 on the wire
            assert _tx_watts(s)[-1] == pytest.approx(10.0 * 3 * V)
            await s.ok("MeterValues", meter_16(1, tx, amps=I1, energy_wh=110.0))
            await eventually(lambda: len(_tx_watts(s)) == 3, timeout_s=5)
            assert _tx_watts(s)[-1] == pytest.approx(10.0 * V)
            await eventually(lambda: cs.state.applied_limit_a("CP1", 1) == pytest.approx(10.0))
            assert s.schema_errors == []
        finally:
            await s.close()


async def test_a_car_going_from_one_phase_to_three_gets_the_power_of_three_from_the_live_loop():
    """Review R3 L4 of session 35 (/tmp/s36/h2/r3_phase_resend.py case C): a car seen on 1 phase
    at a watts-only station held 7360 W (32 A); it went on on 3 phases, the step planned it on 3
    at the same 32 A, and an unchanged limit was never sent again: 10.67 A per phase."""
    async with central_system(make_test_site(1), control="equal", backoff_s=0.01, response_timeout_s=5.0) as cs:
        s = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", answer=_watts_station).connect()
        try:
            tx, stamp = await _started(cs, s)
            await s.ok("MeterValues", meter_16(1, tx, amps=I1, energy_wh=100.0))
            ctl = cs.controller
            await eventually(lambda: _tx_watts(s) and ctl.history and len(ctl.history[-1].targets_a), timeout_s=10)
            assert _tx_watts(s) == [pytest.approx(32.0 * V)]
            await s.ok("MeterValues", meter_16(1, tx, amps=I3, energy_wh=110.0))
            n = len(ctl.history)
            await eventually(lambda: len(ctl.history) >= n + 2, timeout_s=10)
            assert float(ctl.history[-1].targets_a[f"CP1:{tx}"]) == 32.0
            await eventually(lambda: len(_tx_watts(s)) == 2, timeout_s=5)
            assert _tx_watts(s)[-1] / (3 * V) == pytest.approx(32.0)
            assert s.schema_errors == []
        finally:
            await s.close()
