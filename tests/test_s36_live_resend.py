"""The limit sent again to a car at a watts-only station when its phases change, against the
project's RawStation (raw OCPP 1.6J frames checked against the official schemas both ways)."""

from datetime import datetime, timedelta, timezone

import pytest
from interop.station import Late, RawStation, limit_of, meter_16, meter_201, now_iso

from nowblock.testing import central_system, eventually, make_test_site

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
